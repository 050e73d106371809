"""Shared backend state: the Store interface, in process or in Redis (imported only when chosen)."""

from __future__ import annotations

from router.state.base import Batch, Ejection, Snapshot, Store, StoreUnavailable
from router.state.memory import MemorySpace, MemoryStore

__all__ = ["Batch", "Ejection", "MemorySpace", "MemoryStore", "Snapshot", "Store", "StoreUnavailable", "open_store"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(url: str | None, prefix: str, replica: str) -> Store:
    """``None`` or ``memory``: this process only; ``redis://host:port/db``: shared by every
    gateway process using the same Redis and prefix."""
    if url is None or url == "memory":
        return MemoryStore(replica)
    if url.startswith(_REDIS_SCHEMES):
        from router.state.redis import RedisStore

        return RedisStore(url, prefix, replica)
    raise ValueError(f"state URL {url!r}: use 'memory' or redis://HOST:PORT/DB")
