"""Pickers: order the admissible candidates by weighted score, with a bounded share of
exploration so that a backend never measured can earn measurements, and the request's own
ordering wishes (``provider.order``, ``provider.sort``) applied last."""

from __future__ import annotations

from collections.abc import Sequence
from operator import add

from policies.base import Candidate, Mix, RequestShape, Scored, Table, Weights
from policies.filters import J_PER_KWH
from policies.scorers import (
    PRIOR_CAPACITY,
    PRIOR_TOKENS_PER_S,
    PRIOR_TTFT_S,
    Scorer,
    latency_cost,
    price_cost,
    throughput_cost,
)

SORTS: dict[str, Scorer] = {"price": price_cost, "latency": latency_cost, "throughput": throughput_cost}


def score(candidates: Sequence[Candidate], req: RequestShape, weights: Weights) -> list[Scored]:
    """Every candidate with its weighted score in [0, 1], best first (stable on ties). Only the
    scorers with a weight above zero count, and only they appear in the parts."""
    if not candidates:
        return []
    sums, table = weigh(candidates, req, weights.mix)
    ranked = sorted(range(len(sums)), key=sums.__getitem__, reverse=True)  # reverse keeps ties stable
    return [Scored(candidates[i], sums[i], None, table, i) for i in ranked]


def weigh(candidates: Sequence[Candidate], req: RequestShape, mix: Mix) -> tuple[list[float], Table]:
    """The weighted score of each candidate, and the table its parts are read from.

    ``policies.scorers`` and ``normalise`` fused, since this runs on every request: one pass
    computes every scorer's cost per candidate, then per weighted scorer one pass normalises and
    adds. The same formulas and float operations in the same order as the per-scorer reference
    (the tests hold it to it), so the same scores, bit for bit, and the same ranking."""
    if not candidates:
        return [], Table((), [])
    columns = list(zip(*_costs(candidates, req), strict=False))  # per scorer, in SCORER_NAMES order
    sums: list[float] | None = None
    params: list[tuple[Sequence[float | None], float, float | None]] = []
    for k, share in zip(mix.columns, mix.shares, strict=True):
        costs = columns[k]
        try:  # every cost known, the common case: no pass to look for unknown ones
            hi = max(costs)
            span: float | None = hi - min(costs)
        except TypeError:  # None compared with a number, or a lone None: some cost is unknown
            terms, hi, span = _with_unknown(costs, share)
        else:
            if span <= 1e-12 * max(1.0, abs(hi)):  # all alike: every one scores 1 (share x 1.0 is share)
                span, terms = None, [share] * len(costs)
            else:
                terms = [share * ((hi - c) / span) for c in costs]
        # The reference adds each term to a sum from 0.0; the first term alone is that sum (it is >= 0).
        sums = terms if sums is None else list(map(add, sums, terms))
        params.append((costs, hi, span))
    assert sums is not None  # weights are never all zero
    return sums, Table(mix.names, params)


def _with_unknown(costs: Sequence[float | None], share: float) -> tuple[list[float], float, float | None]:
    """A column's weighted terms, its highest known cost and span, when some cost is unknown: an
    unknown cost scores 0 (so adds nothing: acc + 0.0 is acc)."""
    known = [c for c in costs if c is not None]
    hi, lo = (max(known), min(known)) if known else (0.0, 0.0)
    span = hi - lo
    if span <= 1e-12 * max(1.0, abs(hi)):
        return [share] * len(costs), hi, None
    return [0.0 if c is None else share * ((hi - c) / span) for c in costs], hi, span


def _costs(cands: Sequence[Candidate], req: RequestShape) -> list[tuple[float | None, ...]]:
    """Per candidate, the cost of every scorer in ``SCORER_NAMES`` order: latency, price,
    energy, carbon, load, trust (``policies.scorers`` says what each means)."""
    i, o = req.input_tokens, req.max_output_tokens
    return [
        (
            (PRIOR_TTFT_S if (s := c.stats).ttft_s is None else s.ttft_s) + o / (s.tokens_per_s or PRIOR_TOKENS_PER_S),
            None
            if (p := c.profile).price_input is None or p.price_output is None
            else (i * p.price_input + o * p.price_output) / 1e6,
            (j := None if (e := c.energy).j_in is None or e.j_out is None else i * e.j_in + o * e.j_out),
            None if j is None or (g := p.carbon_intensity) is None else j * g / J_PER_KWH,
            s.inflight / (p.info.max_concurrency or PRIOR_CAPACITY),
            1.0 - p.trust * (1.0 - s.error_rate),
        )
        for c in cands
    ]


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
