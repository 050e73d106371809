"""Pickers: order the admissible candidates by weighted score, with a bounded share of
exploration so that a backend never measured can earn measurements, and the request's own
ordering wishes (``provider.order``, ``provider.sort``) applied last."""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import Candidate, RequestShape, Scored, Weights
from policies.scorers import SCORERS, Scorer, latency_cost, normalise, price_cost, throughput_cost

SORTS: dict[str, Scorer] = {"price": price_cost, "latency": latency_cost, "throughput": throughput_cost}


def score(candidates: Sequence[Candidate], req: RequestShape, weights: Weights) -> list[Scored]:
    """Every candidate with its weighted score in [0, 1], best first (stable on ties). Only the
    scorers with a weight above zero run, and only they appear in the parts."""
    if not candidates:
        return []
    active = weights.active()
    total = sum(w for _, w in active)
    columns = [(name, normalise([SCORERS[name](c, req) for c in candidates])) for name, _ in active]
    sums = [0.0] * len(candidates)
    for (_, col), (_, w) in zip(columns, active, strict=True):
        share = w / total
        sums = [acc + share * v for acc, v in zip(sums, col, strict=True)]
    scored = [Scored(c, value, columns=columns, index=i) for i, (c, value) in enumerate(zip(candidates, sums,
                                                                                               strict=True))]
    scored.sort(key=_by_score)
    return scored


def _by_score(s: Scored) -> float:
    return -s.score


def order(scored: list[Scored], exploration: float, draw: float) -> list[Scored]:
    """The attempt order. With probability ``exploration`` (``draw`` is a uniform [0, 1) number
    the caller supplies) the best unmeasured candidate goes first."""
    if draw >= exploration:
        return scored
    unmeasured = next((s for s in scored if not s.candidate.measured), None)
    if unmeasured is None or unmeasured is scored[0]:
        return scored
    return [unmeasured, *(s for s in scored if s is not unmeasured)]


def sort_by(scored: list[Scored], key: str, req: RequestShape) -> list[Scored]:
    """Strictly by one attribute (a request's ``provider.sort``); unknown values go last."""
    fn = SORTS[key]

    def cost(s: Scored) -> tuple[bool, float]:
        value = fn(s.candidate, req)
        return (value is None, 0.0 if value is None else value)

    return sorted(scored, key=cost)


def prefer(scored: list[Scored], names: Sequence[str], others: bool) -> list[Scored]:
    """The named backends first, in the order named; then, if ``others``, the rest by score."""
    by_name = {s.candidate.profile.info.name: s for s in scored}
    first = [by_name[n] for n in names if n in by_name]
    if not others:
        return first
    listed = set(names)
    return first + [s for s in scored if s.candidate.profile.info.name not in listed]
