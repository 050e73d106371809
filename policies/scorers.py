"""Scorers: each maps a candidate to a cost for this request; ``normalise`` turns costs into
scores in [0, 1] across the candidates (1 = best). Unknown values score as the worst known one,
so an undeclared price or energy never looks free. These are the definitions; the request path
runs them fused, in ``pickers.weigh``, and the tests hold the two to the same result."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.base import Candidate, RequestShape
from policies.filters import request_carbon_g, request_cost

# Priors for a backend never measured: pessimistic enough that measured backends are preferred.
PRIOR_TTFT_S = 1.0
PRIOR_TOKENS_PER_S = 30.0
# In-flight requests a backend with no declared max_concurrency is taken to handle at once.
PRIOR_CAPACITY = 16

Scorer = Callable[[Candidate, RequestShape], float | None]


def latency_cost(c: Candidate, req: RequestShape) -> float | None:
    """Predicted seconds to the last token: time to first token + max output tokens / tokens per s."""
    ttft = c.stats.ttft_s if c.stats.ttft_s is not None else PRIOR_TTFT_S
    tps = c.stats.tokens_per_s or PRIOR_TOKENS_PER_S
    return ttft + req.max_output_tokens / tps


def price_cost(c: Candidate, req: RequestShape) -> float | None:
    """USD for this request's estimated tokens."""
    return request_cost(c, req)


def energy_cost(c: Candidate, req: RequestShape) -> float | None:
    """Joules for this request's estimated tokens."""
    return c.energy.joules(req.input_tokens, req.max_output_tokens)


def carbon_cost(c: Candidate, req: RequestShape) -> float | None:
    """gCO2e for this request's estimated tokens: its energy times the grid's intensity."""
    return request_carbon_g(c, req)


def load_cost(c: Candidate, req: RequestShape) -> float | None:
    """Share of the backend's capacity already in flight."""
    return c.stats.inflight / (c.profile.info.max_concurrency or PRIOR_CAPACITY)


def trust_cost(c: Candidate, req: RequestShape) -> float | None:
    """Distrust: 1 - (class or declared trust, lowered by the measured error rate)."""
    return 1.0 - c.trust


def throughput_cost(c: Candidate, req: RequestShape) -> float | None:
    """Negative measured tokens per second (for a request's ``sort: throughput``)."""
    return None if c.stats.tokens_per_s is None else -c.stats.tokens_per_s


SCORERS: dict[str, Scorer] = {
    "latency": latency_cost,
    "price": price_cost,
    "energy": energy_cost,
    "carbon": carbon_cost,
    "load": load_cost,
    "trust": trust_cost,
}


def normalise(costs: Sequence[float | None]) -> list[float]:
    known = [c for c in costs if c is not None]
    if not known:
        return [1.0] * len(costs)
    lo, hi = min(known), max(known)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return [1.0] * len(costs)
    span = hi - lo
    return [0.0 if c is None else (hi - c) / span for c in costs]
