"""The usage ledger: durable usage events, one per attempt that reached a backend, and their rollups."""

from __future__ import annotations

from typing import Literal

from router.ledger.base import Ledger, UsageRecord
from router.ledger.sqlite import SQLiteLedger

__all__ = ["Ledger", "SQLiteLedger", "UsageRecord", "ledger_kind", "open_ledger", "sqlite_path"]

_POSTGRES = ("postgresql://", "postgres://")


def ledger_kind(url: str) -> Literal["sqlite", "postgres"]:
    """Which store a ledger URL names; anything else is refused with the accepted forms."""
    if url.startswith(_POSTGRES):
        return "postgres"
    if url.startswith("sqlite:///") or "://" not in url:
        return "sqlite"
    raise ValueError(f"ledger URL {url!r}: only sqlite:///PATH is supported, or postgresql://USER@HOST:PORT/DB")


def sqlite_path(url: str) -> str:
    """The file behind an SQLite ledger URL (``sqlite:///path``, ``sqlite:///:memory:`` or a bare path)."""
    if ledger_kind(url) != "sqlite":
        raise ValueError(f"ledger URL {url!r} is not an SQLite file")
    return url.removeprefix("sqlite:///")


def open_ledger(url: str, retention_days: int | None = None) -> Ledger:
    if ledger_kind(url) == "postgres":
        from router.ledger.postgres import PostgresLedger  # asyncpg is loaded only when configured

        return PostgresLedger(url, retention_days)
    return SQLiteLedger(sqlite_path(url), retention_days)
