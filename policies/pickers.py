"""Pickers: order the admissible candidates by weighted score, with a bounded share of
exploration so that a backend never measured can earn measurements."""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import Candidate, RequestShape, Scored, Weights
from policies.scorers import SCORERS, normalise


def score(candidates: Sequence[Candidate], req: RequestShape, weights: Weights) -> list[Scored]:
    """Every candidate with its weighted score in [0, 1], best first (stable on ties)."""
    if not candidates:
        return []
    columns = {name: normalise([fn(c, req) for c in candidates]) for name, fn in SCORERS.items()}
    w = {"latency": weights.latency, "price": weights.price, "energy": weights.energy}
    total = sum(w.values())
    scored = []
    for i, c in enumerate(candidates):
        parts = {name: col[i] for name, col in columns.items()}
        value = sum(w[name] * parts[name] for name in parts) / total
        scored.append(Scored(c, value, parts))
    return sorted(scored, key=lambda s: -s.score)


def order(scored: list[Scored], exploration: float, draw: float) -> list[Scored]:
    """The attempt order. With probability ``exploration`` (``draw`` is a uniform [0, 1) number
    the caller supplies) the best unmeasured candidate goes first."""
    if draw >= exploration:
        return scored
    unmeasured = next((s for s in scored if not s.candidate.measured), None)
    if unmeasured is None or unmeasured is scored[0]:
        return scored
    return [unmeasured, *(s for s in scored if s is not unmeasured)]
