"""The usage record and the ledger interface every storage backend implements."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Outcome = Literal["ok", "upstream_error", "client_error", "client_disconnected", "cancelled"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
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


COLUMNS: tuple[str, ...] = tuple(UsageRecord.__dataclass_fields__)


class Ledger(Protocol):
    def submit(self, record: UsageRecord) -> asyncio.Future[None]:
        """Queue the record; the future resolves once it is durable. Submitting the same
        request id twice keeps the first record only."""
        ...

    async def totals(self, tenant: str | None = None) -> dict[str, Any]: ...

    async def recent(self, limit: int = 50, tenant: str | None = None) -> list[dict[str, Any]]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
