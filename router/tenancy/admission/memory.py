"""Admission of one gateway process, in memory: the rules of ``.base`` kept in dicts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from router.config import Budget
from router.ledger.base import Ledger, UsageRecord
from router.tenancy.admission.base import BUDGET_WARNING, Demand, Ticket, tokens_of
from router.tenancy.budgets import ZERO, Line, LineCache, MemoryBudgets, ledger_spend, lines, of_record, report
from router.tenancy.limits import MemoryLimits, buckets, headers, stream_slots, too_large


class LocalAdmission:
    """Limits and budgets of one gateway process, in memory."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._limits = MemoryLimits(clock)
        self._budgets = MemoryBudgets()
        self._lines = LineCache()

    async def _seed(self, tenant: str, wanted: list[Line]) -> None:
        for line in self._budgets.missing(tenant, wanted):
            self._budgets.seed(tenant, line, await ledger_spend(self._ledger, tenant, line))

    async def admit(self, demand: Demand) -> Ticket:
        wanted = self._lines(demand.budgets, demand.received)
        await self._seed(demand.tenant, wanted)
        # From here on no await: the checks and the writes below see the same state.
        draws = buckets(demand.tenant, demand.key_id, demand.limits, demand.key_limits, demand.tokens)
        for bucket in draws:
            if err := too_large(bucket):
                raise err
        slots = stream_slots(demand.tenant, demand.key_id, demand.limits, demand.key_limits) if demand.stream else []
        if err := self._limits.blocked(slots):
            raise err
        refused, warnings = self._budgets.check(demand.tenant, wanted, demand.worst)
        if refused:
            raise refused
        verdicts, err = self._limits.draw(draws)
        if err:
            raise err
        self._limits.acquire(slots)
        reserved = demand.worst if wanted else ZERO
        self._budgets.reserve(demand.tenant, reserved)
        out = headers(verdicts)
        if warnings:
            out[BUDGET_WARNING] = "; ".join(warnings)
        return Ticket(demand, draws, slots, wanted, out, reserved)

    async def settle(self, ticket: Ticket, record: UsageRecord | None) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        self._limits.correct(ticket.buckets, tokens_of(record))
        self._limits.release(ticket.slots)
        if ticket.lines:
            self._budgets.settle(ticket.demand.tenant, ticket.lines, ticket.reserved, of_record(record))

    async def prime(self, tenant: str, budgets: list[Budget]) -> None:
        await self._seed(tenant, lines(budgets, time.time()))

    async def budgets(self, tenant: str, budgets: list[Budget]) -> list[dict[str, Any]]:
        wanted = lines(budgets, time.time())
        await self._seed(tenant, wanted)
        return [report(line, *self._budgets.state(tenant, line)) for line in wanted]

    async def close(self) -> None:
        return None
