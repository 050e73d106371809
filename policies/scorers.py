"""Scorers: each maps the candidates to a cost for this request; ``normalise`` turns costs into
scores in [0, 1] across the candidates (1 = best). Unknown values score as the worst known one,
so an undeclared price never looks free."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.base import Candidate, RequestShape

# Priors for a backend never measured: pessimistic enough that measured backends are preferred.
PRIOR_TTFT_S = 1.0
PRIOR_TOKENS_PER_S = 30.0

Scorer = Callable[[Candidate, RequestShape], float | None]


def latency_cost(c: Candidate, req: RequestShape) -> float | None:
    ttft = c.stats.ttft_s if c.stats.ttft_s is not None else PRIOR_TTFT_S
    tps = c.stats.tokens_per_s or PRIOR_TOKENS_PER_S
    return ttft + req.max_output_tokens / tps


def price_cost(c: Candidate, req: RequestShape) -> float | None:
    if c.price_input is None or c.price_output is None:
        return None
    return (req.input_tokens * c.price_input + req.max_output_tokens * c.price_output) / 1e6


def energy_cost(c: Candidate, req: RequestShape) -> float | None:
    if c.info.joules_per_token is None:
        return None
    return (req.input_tokens + req.max_output_tokens) * c.info.joules_per_token


SCORERS: dict[str, Scorer] = {"latency": latency_cost, "price": price_cost, "energy": energy_cost}


def normalise(costs: Sequence[float | None]) -> list[float]:
    known = [c for c in costs if c is not None]
    if not known:
        return [1.0] * len(costs)
    lo, hi = min(known), max(known)
    filled = [hi if c is None else c for c in costs]
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return [1.0] * len(costs)
    return [(hi - c) / (hi - lo) for c in filled]
