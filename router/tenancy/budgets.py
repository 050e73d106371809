"""Budgets that never overshoot: a worst-case reservation before a request, its real cost after.

A tenant's budget caps its spend in USD, energy (kWh) or carbon (kg CO2e) over a UTC period
(``daily``, ``monthly`` or ``total``). Before a request goes out its worst case is reserved:
its prompt bounded by the body's length in bytes (a byte-level tokenizer never makes more
tokens than bytes) plus its maximum output tokens times ``n``, at the most expensive (or most
energy-hungry, or dirtiest) backend of its plan. The request is refused if the period's spend,
plus what requests in flight hold, plus this reservation would pass the hard limit. When the
request ends, however it ends, the reservation is swapped for the real cost of its ledger record.

Amounts are integers of 1e-9 of the budget's unit, rounded up, so sums are exact and a float
never tips a sum over its limit. The spend of a period starts from the ledger's totals, read
the first time the period is used (so it survives restarts), and grows with every settlement.

This module holds the arithmetic and the in-process state; ``router.tenancy.admission.base`` runs the same
rules in Redis for gateways that share their budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, NamedTuple

from policies.base import Scored
from router.config import Budget
from router.errors import GatewayError
from router.ledger.base import Ledger, UsageRecord

Metric = Literal["usd", "kwh", "kg_co2e"]
METRICS: tuple[Metric, ...] = ("usd", "kwh", "kg_co2e")
UNITS = {"usd": "USD", "kwh": "kWh", "kg_co2e": "kg CO2e"}
NANO = 1_000_000_000
_J_PER_WH = 3600.0
# The ledger's field for each metric, and how many budget units one ledger unit is.
_LEDGER = {"usd": ("cost_usd", 1.0), "kwh": ("energy_wh", 1e-3), "kg_co2e": ("carbon_g", 1e-3)}


class Amounts(NamedTuple):
    """A cost in each metric, in 1e-9 of the budget's unit."""

    usd: int = 0
    kwh: int = 0
    kg_co2e: int = 0


ZERO = Amounts()


def nano(value: float, metric: Metric) -> int:
    """A ledger figure in budget nano-units, rounded up (rounding never lowers a cost)."""
    return max(0, math.ceil(value * _LEDGER[metric][1] * NANO))


def of_record(record: UsageRecord | None) -> Amounts:
    """The real cost of a request, from its billed ledger record (none: it cost nothing)."""
    if record is None or not record.billed:
        return ZERO
    return Amounts(nano(record.cost_usd, "usd"), nano(record.energy_wh, "kwh"), nano(record.carbon_g, "kg_co2e"))


def worst_case(order: list[Scored], prompt_bound: int, output_bound: int) -> Amounts:
    """The most this request can cost on any backend of its plan, in each metric."""
    usd = wh = grams = 0.0
    for scored in order:
        cand = scored.candidate
        usd = max(usd, (prompt_bound * (cand.price_input or 0.0) + output_bound * (cand.price_output or 0.0)) / 1e6)
        joules = [j for j in (cand.info.joules_per_token, cand.energy.j_in, cand.energy.j_out) if j is not None]
        energy = (prompt_bound + output_bound) * max(joules, default=0.0) / _J_PER_WH
        wh = max(wh, energy)
        grams = max(grams, energy / 1000.0 * (cand.profile.carbon_intensity or 0.0))
    return Amounts(nano(usd, "usd"), nano(wh, "kwh"), nano(grams, "kg_co2e"))


def period_start(period: str, now: float) -> datetime | None:
    """The start of the UTC period holding ``now``; None for ``total``."""
    day = datetime.fromtimestamp(now, UTC)
    if period == "daily":
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if period == "monthly":
        return datetime(day.year, day.month, 1, tzinfo=UTC)
    return None


def period_end(period: str, now: float) -> datetime | None:
    start = period_start(period, now)
    if start is None:
        return None
    if period == "daily":
        return datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Line:
    """One budget as it applies to a request: the counter of its current period and its limits."""

    metric: Metric
    period: str
    key: str  # "usd:daily:2025-06-01": the period's spend counter
    since: date | None  # the period's first day, for the ledger
    ttl_s: int | None  # how long the counter is worth keeping
    hard: int | None
    soft: int | None

    @property
    def index(self) -> int:
        return METRICS.index(self.metric)


def lines(budgets: list[Budget], now: float) -> list[Line]:
    out = []
    for b in budgets:
        start, end = period_start(b.period, now), period_end(b.period, now)
        label = "total" if start is None else start.date().isoformat()[: 7 if b.period == "monthly" else 10]
        ttl = None if end is None else int(end.timestamp() - now) + 2 * 86400
        out.append(
            Line(
                b.metric,
                b.period,
                f"{b.metric}:{b.period}:{label}",
                None if start is None else start.date(),
                ttl,
                None if b.hard is None else math.floor(b.hard * NANO + 1e-6),
                None if b.soft is None else math.floor(b.soft * NANO + 1e-6),
            )
        )
    return out


class LineCache:
    """``lines`` remembered per UTC day (periods start at midnight UTC): budgets seldom change."""

    def __init__(self, size: int = 4096) -> None:
        self._memo: dict[tuple[tuple[Budget, ...], int], list[Line]] = {}
        self._size = size

    def __call__(self, budgets: tuple[Budget, ...], now: float) -> list[Line]:
        key = (budgets, int(now // 86400))
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= self._size:
                self._memo.clear()
            hit = self._memo[key] = lines(list(budgets), now)
        return hit


async def ledger_spend(ledger: Ledger, tenant: str, line: Line) -> int:
    """The period's billed spend so far, as the ledger has it."""
    totals = await ledger.totals(tenant, since=line.since)
    return nano(float(totals.get(_LEDGER[line.metric][0]) or 0.0), line.metric)


class BudgetExceeded(GatewayError):
    """A hard budget would be passed: retrying cannot help until the period ends or it is raised."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    should_retry = False


def _fmt(amount: int) -> str:
    return f"{amount / NANO:.6g}"


def refusal(tenant: str, line: Line, spend: int, held: int, amount: int) -> BudgetExceeded:
    unit = UNITS[line.metric]
    return BudgetExceeded(
        f"Budget exceeded: tenant {tenant!r} has a {line.period} {line.metric} budget of "
        f"{_fmt(line.hard or 0)} {unit} (hard limit); {_fmt(spend)} {unit} spent and {_fmt(held)} {unit} held by "
        f"requests in flight, and this request may cost up to {_fmt(amount)} {unit}."
    )


def warning(line: Line, spend: int, held: int) -> str:
    return (
        f"{line.period} {line.metric} budget: {_fmt(spend + held)} of {_fmt(line.hard or line.soft or 0)} "
        f"{UNITS[line.metric]} spent or held, past the soft limit of {_fmt(line.soft or 0)}"
    )


def report(line: Line, spend: int, held: int) -> dict[str, Any]:
    """A budget's state for the admin API, in the budget's own units."""
    return {
        "metric": line.metric,
        "period": line.period,
        "since": line.since and line.since.isoformat(),
        "hard": None if line.hard is None else line.hard / NANO,
        "soft": None if line.soft is None else line.soft / NANO,
        "spent": spend / NANO,
        "reserved": held / NANO,
        "remaining": None if line.hard is None else max(0, line.hard - spend - held) / NANO,
    }


class MemoryBudgets:
    """Spend per tenant and period, and what requests in flight hold, in this process's dicts.
    Read and written from the event loop only, with no await between a check and its write."""

    def __init__(self) -> None:
        self._spend: dict[tuple[str, str], int] = {}
        self._current: dict[tuple[str, str, str], str] = {}  # (tenant, metric, period) -> counter in use
        self._held: dict[str, list[int]] = {}

    def missing(self, tenant: str, wanted: list[Line]) -> list[Line]:
        return [line for line in wanted if (tenant, line.key) not in self._spend]

    def seed(self, tenant: str, line: Line, spend: int) -> None:
        """Start a period's counter from the ledger, unless a concurrent request did already."""
        if (tenant, line.key) in self._spend:
            return
        self._spend[(tenant, line.key)] = spend
        old = self._current.get((tenant, line.metric, line.period))
        if old is not None and old != line.key:
            self._spend.pop((tenant, old), None)  # that period is over
        self._current[(tenant, line.metric, line.period)] = line.key

    def check(self, tenant: str, wanted: list[Line], amounts: Amounts) -> tuple[BudgetExceeded | None, list[str]]:
        held = self._held.get(tenant, [0, 0, 0])
        warnings = []
        for line in wanted:
            spend = self._spend[(tenant, line.key)]
            after = spend + held[line.index] + amounts[line.index]
            if line.hard is not None and after > line.hard:
                return refusal(tenant, line, spend, held[line.index], amounts[line.index]), []
            if line.soft is not None and after > line.soft:
                warnings.append(warning(line, spend, held[line.index] + amounts[line.index]))
        return None, warnings

    def reserve(self, tenant: str, amounts: Amounts) -> None:
        held = self._held.setdefault(tenant, [0, 0, 0])
        for i, amount in enumerate(amounts):
            held[i] += amount

    def settle(self, tenant: str, wanted: list[Line], reserved: Amounts, actual: Amounts) -> None:
        held = self._held.get(tenant)
        if held is not None:
            for i, amount in enumerate(reserved):
                held[i] -= amount
            if not any(held):
                del self._held[tenant]
        for line in wanted:
            if (tenant, line.key) in self._spend:  # else its period is over and was dropped
                self._spend[(tenant, line.key)] += actual[line.index]

    def state(self, tenant: str, line: Line) -> tuple[int, int]:
        """(spend, held) of a seeded line."""
        return self._spend[(tenant, line.key)], self._held.get(tenant, [0, 0, 0])[line.index]


__all__ = [
    "METRICS",
    "ZERO",
    "Amounts",
    "BudgetExceeded",
    "Line",
    "LineCache",
    "MemoryBudgets",
    "ledger_spend",
    "lines",
    "of_record",
    "period_end",
    "period_start",
    "report",
    "worst_case",
]
