"""Admission control: rate limits and budget reservation before a request goes out, settlement after.

``admit`` checks, in this order and all or nothing: the budgets' periods are known (else they are
read from the ledger first), a stream slot is free, the worst case fits every hard budget, and
every requests/tokens bucket has room; then it takes them all and returns a ``Ticket``.
``settle`` gives the ticket back with the request's billed record (or None when nothing was
billed): the stream slots are freed, the token estimate is corrected and the budget reservation
becomes the real cost. The gateway settles on every exit path; settling twice is a no-op.

Two implementations with the same behaviour: ``LocalAdmission`` (``.memory``) keeps its state in dicts
(one process; a few dict operations per request), ``RedisAdmission`` (``.redis``) in Redis, one
script call per admit and one per settle, shared by every gateway on that Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from policies.base import Scored
from router.config import Budget, RateLimits
from router.ledger.base import UsageRecord
from router.tenancy.budgets import (
    ZERO,
    Amounts,
    Line,
    worst_case,
)
from router.tenancy.limits import Bucket

#: Output tokens reserved for a request that sets no max_tokens; for a tenant with a hard budget
#: the gateway also sends it upstream as max_tokens, so the reservation is a real bound.
DEFAULT_MAX_OUTPUT = 4096
BUDGET_WARNING = "x-fedrouter-budget-warning"


@dataclass(slots=True)  # not frozen: built on every request, and a frozen __init__ costs five times as much
class Demand:
    """What one request asks of its tenant's limits and budgets."""

    request_id: str
    tenant: str
    key_id: str
    limits: RateLimits
    key_limits: RateLimits | None
    budgets: tuple[Budget, ...]
    tokens: int  # estimate for tokens per minute: prompt estimate + max output tokens
    worst: Amounts  # budget reservation
    stream: bool
    received: float  # wall clock: which budget period the request belongs to, as in the ledger


@dataclass(slots=True)
class Ticket:
    demand: Demand
    buckets: list[Bucket]
    slots: list[tuple[str, int]]
    lines: list[Line]
    headers: dict[str, str]
    reserved: Amounts = ZERO
    settled: bool = field(default=False)


class Admission(Protocol):
    async def admit(self, demand: Demand) -> Ticket:
        """Take the request's share of every limit and budget, or raise RateLimited/BudgetExceeded."""
        ...

    async def settle(self, ticket: Ticket, record: UsageRecord | None) -> None:
        """Give back what ``admit`` took, replacing the reservation with the record's billed cost."""
        ...

    async def prime(self, tenant: str, budgets: list[Budget]) -> None:
        """Make sure the current periods' spend is known (read from the ledger if not)."""
        ...

    async def budgets(self, tenant: str, budgets: list[Budget]) -> list[dict[str, Any]]:
        """Each budget's current period: limits, spend and what requests in flight hold."""
        ...

    async def close(self) -> None: ...


def output_bound(endpoint: str, payload: dict[str, Any]) -> tuple[int, bool]:
    """The most output tokens the request can produce (all its choices), and whether the
    client set a maximum."""
    if endpoint == "embeddings":
        return 0, True
    given = [v for v in (payload.get("max_completion_tokens"), payload.get("max_tokens")) if isinstance(v, int)]
    choices = max((v for k in ("n", "best_of") if isinstance(v := payload.get(k), int) and v > 0), default=1)
    return (max(given) if given else DEFAULT_MAX_OUTPUT) * choices, bool(given)


def demand(
    *,
    request_id: str,
    tenant: str,
    key_id: str,
    limits: RateLimits,
    key_limits: RateLimits | None,
    budgets: list[Budget],
    endpoint: str,
    payload: dict[str, Any],
    body_bytes: int,
    prompt_estimate: int,
    order: list[Scored],
    stream: bool,
    received: float,
) -> Demand:
    out, _ = output_bound(endpoint, payload)
    worst = worst_case(order, body_bytes, out) if budgets else ZERO
    return Demand(
        request_id, tenant, key_id, limits, key_limits, tuple(budgets), prompt_estimate + out, worst, stream, received
    )


def needs_output_cap(budgets: list[Budget], endpoint: str, payload: dict[str, Any]) -> bool:
    """A request of a tenant with a hard budget must carry a max output, or its cost has no bound."""
    return any(b.hard is not None for b in budgets) and not output_bound(endpoint, payload)[1]


def tokens_of(record: UsageRecord | None) -> int:
    return 0 if record is None else record.input_tokens + record.output_tokens


__all__ = [
    "BUDGET_WARNING",
    "DEFAULT_MAX_OUTPUT",
    "Admission",
    "Demand",
    "Ticket",
    "demand",
    "needs_output_cap",
    "output_bound",
    "tokens_of",
]
