"""The usage ledger: one durable record per request that reached a backend."""

from __future__ import annotations

from router.ledger.base import Ledger, UsageRecord
from router.ledger.sqlite import SQLiteLedger

__all__ = ["Ledger", "SQLiteLedger", "UsageRecord", "open_ledger", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """The file behind a ledger URL (``sqlite:///path``, ``sqlite:///:memory:`` or a bare path)."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if "://" in url:
        raise ValueError(
            f"ledger URL {url!r}: only sqlite:///PATH is supported in this version (PostgreSQL is planned)"
        )
    return url


def open_ledger(url: str) -> Ledger:
    return SQLiteLedger(sqlite_path(url))
