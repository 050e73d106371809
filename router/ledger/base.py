"""The usage record and the ledger interface every storage backend implements.

A record is one *event*: one attempt of one request that reached a backend. Its id,
``{request_id}:{attempt}``, is deterministic, so replaying an event (a retried write, a re-import)
never counts it twice. The attempt that answered the client is billed (``kind="request"``); a
failed retried attempt or a losing hedged one that still consumed tokens is kept with its own
kind and ``billed=False`` so operators see the consumption without the tenant paying for it.

Daily rollups per (day, tenant, backend, model) are kept in the same transaction as the events
they sum, and only for events actually inserted; raw events may be pruned after a retention
period, rollups are kept, so totals come from rollups and survive pruning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol

Outcome = Literal["ok", "upstream_error", "client_error", "client_disconnected", "cancelled"]
Kind = Literal["request", "retry", "hedge"]
EnergySource = Literal["declared", "measured", "derived", "none"]

log = logging.getLogger("fedrouter.ledger")

DAY_S = 86400.0


@dataclass(slots=True)
class UsageRecord:
    """One ledger event. Not mutated once built (it crosses to the writer thread), yet not a
    frozen dataclass: a frozen one's ``__init__`` costs five times as much, on every request."""

    request_id: str
    ts: float  # unix seconds when the request arrived
    tenant: str
    backend: str
    backend_class: str
    zone: str | None
    model: str
    endpoint: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    energy_wh: float
    latency_ms: float
    ttft_ms: float | None
    outcome: Outcome
    tokens_source: Literal["upstream", "counted"]
    attempts: int
    stream: bool
    attempt: int = 1  # which attempt of the request this event is (1-based)
    kind: Kind = "request"
    billed: bool = True
    key_id: str | None = None
    carbon_g: float = 0.0  # grams CO2e; 0 until the energy model attributes carbon
    energy_source: EnergySource = "none"
    decision: str | None = None  # JSON: the candidates, their scores and why others were filtered out

    @property
    def event_id(self) -> str:
        return f"{self.request_id}:{self.attempt}"


FIELDS: tuple[str, ...] = tuple(UsageRecord.__dataclass_fields__)
#: The columns of a stored event, in order: the event id, then every field of the record.
COLUMNS: tuple[str, ...] = ("event_id", *FIELDS)
#: The figures a daily rollup sums; ``requests`` and the unprefixed ones count billed events only.
ROLLUP_SUMS: tuple[str, ...] = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "energy_wh",
    "carbon_g",
    "unbilled_events",
    "unbilled_input_tokens",
    "unbilled_output_tokens",
    "unbilled_cost_usd",
    "unbilled_energy_wh",
    "unbilled_carbon_g",
)
ROLLUP_COLUMNS: tuple[str, ...] = (
    "day",
    "tenant",
    "backend",
    "model",
    "backend_class",
    "zone",
    "energy_source",
    *ROLLUP_SUMS,
)
PAYOUT_COLUMNS: tuple[str, ...] = (
    "backend",
    "backend_class",
    "zone",
    "requests",
    "input_tokens",
    "output_tokens",
    "revenue_usd",
    "energy_wh",
    "carbon_g",
    "unbilled_events",
    "unbilled_tokens",
    "unbilled_energy_wh",
)


def row_of(rec: UsageRecord) -> tuple[Any, ...]:
    return (rec.event_id, *(getattr(rec, f) for f in FIELDS))


# The days a report may name. Timestamps are unix seconds, and a range's end (the next day's
# midnight, and a FOCUS row's billing month after it) must still be a date: 9999-12-31 overflowed.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)


def out_of_range(day: date) -> str | None:
    """Why the ledger cannot report on this day, or None if it can."""
    if FIRST_DAY <= day <= LAST_DAY:
        return None
    return f"{day} is outside the days the ledger reports on ({FIRST_DAY} to {LAST_DAY})"


def day_start(day: date) -> float:
    """Unix seconds at 00:00 UTC of the day."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def day_bounds(start: date, end: date) -> tuple[float, float]:
    """The half-open span of unix seconds covering the UTC days start..end, both included."""
    if (why := out_of_range(start) or out_of_range(end)) is not None:
        raise ValueError(why)  # the edges answer 400 first; this keeps OverflowError out of the ledger
    return day_start(start), day_start(end + timedelta(days=1))


class Ledger(Protocol):
    """Durable storage of usage events. Every method but ``submit`` and ``enqueue`` is for reporting."""

    def submit(self, record: UsageRecord) -> asyncio.Future[None]:
        """Queue the record; the future resolves once it is durable (or once it is known to be
        a duplicate: an event id already stored keeps its first record, and adds nothing)."""
        ...

    def enqueue(self, record: UsageRecord) -> None:
        """Queue the record with nobody waiting for its commit. The writer may hold it a few
        milliseconds to commit it with others, and logs it if its commit fails."""
        ...

    async def totals(
        self, tenant: str | None = None, since: date | None = None, until: date | None = None
    ) -> dict[str, Any]:
        """Sums over the UTC days since..until (both included; None = unbounded), from the
        rollups: ``requests``, tokens, ``cost_usd``, ``energy_wh``, ``carbon_g`` of billed
        events, and the ``unbilled_*`` figures of the others."""
        ...

    async def recent(self, limit: int = 50, tenant: str | None = None) -> list[dict[str, Any]]:
        """The latest events, newest first, as dicts of COLUMNS."""
        ...

    def events(
        self, tenant: str | None, start: date, end: date, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Raw events of the UTC days start..end in (ts, event_id) order, read a page at a time
        so that a range of any size streams in constant memory."""
        ...

    def rollups(self, tenant: str | None, start: date, end: date) -> AsyncIterator[dict[str, Any]]:
        """Daily rollups (ROLLUP_COLUMNS) of the days start..end, by day, tenant, backend, model."""
        ...

    async def payouts(self, start: date, end: date) -> list[dict[str, Any]]:
        """Per backend (PAYOUT_COLUMNS): tokens served, revenue at its price (the billed cost),
        energy (billed and unbilled consumption), over the days start..end."""
        ...

    async def prune(self) -> int:
        """Delete raw events older than the retention period; rollups stay. Returns the count."""
        ...

    async def start(self) -> None:
        """Open storage and apply pending schema migrations."""
        ...

    async def close(self) -> None:
        """Make every submitted record durable, then release storage."""
        ...


class Retention:
    """How long raw events are kept, and the periodic pruning that enforces it."""

    def __init__(self, days: int | None) -> None:
        self.days = days

    def cutoff(self) -> float | None:
        return None if self.days is None else time.time() - self.days * DAY_S

    def too_old(self, rec: UsageRecord) -> bool:
        """An event older than the retention window cannot be checked against its pruned
        original, so replaying it could count it twice: it is dropped instead."""
        cutoff = self.cutoff()
        if cutoff is None or rec.ts >= cutoff:
            return False
        log.warning("usage event %s is older than the %s-day retention; not recorded", rec.event_id, self.days)
        return True

    def start(self, ledger: Ledger, every_s: float = 3600.0) -> asyncio.Task[None] | None:
        if self.days is None:
            return None

        async def loop() -> None:
            while True:
                try:
                    await ledger.prune()
                except Exception:  # a failed prune must not stop later ones
                    log.exception("pruning the usage ledger failed")
                await asyncio.sleep(every_s)

        return asyncio.create_task(loop(), name="ledger-retention")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# How long a writer holds a batch nobody waits for, to gather more: fewer, larger commits
# (at 8,000 records/s, some forty per commit rather than one or two).
LINGER_S = 0.005


def lost(records: list[UsageRecord], error: BaseException) -> None:
    """Records nobody waited for, whose commit failed: the log is all that is left of them."""
    for rec in records:
        log.error(
            "usage record %s (tenant %s, backend %s) was not recorded: %s", rec.event_id, rec.tenant, rec.backend, error
        )


def resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def done_future() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class Unawaited:
    """A ledger whose ``submit`` does not wait for the commit: for an operator who trades the
    durability promise for latency (``FEDROUTER_LEDGER_DURABLE=false``), and for the benchmark
    that prices that promise. Everything else is the wrapped ledger's."""

    def __init__(self, inner: Ledger) -> None:
        self._inner = inner

    def submit(self, record: UsageRecord) -> asyncio.Future[None]:
        self._inner.enqueue(record)
        return done_future()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
