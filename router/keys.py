"""API keys: created once, shown once, stored only as a SHA-256 hash.

Keys are 256-bit random tokens, so a plain SHA-256 is a sound digest (no password stretching
needed) and a lookup by digest never compares secrets character by character.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass

from router.ledger.sqlite import connect

_PREFIX = "fr-"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    created REAL NOT NULL, revoked REAL
);
"""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Keys in the gateway's SQLite database; lookups are cached for ``cache_s`` seconds."""

    def __init__(self, path: str, cache_s: float = 10.0) -> None:
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        self._cache_s = cache_s
        self._lock = asyncio.Lock()

    def create(self, tenant: str) -> tuple[str, KeyRecord]:
        """A new key for the tenant: the secret (to show once) and its record."""
        key = _PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(key_id="key_" + secrets.token_hex(6), tenant=tenant)
        self._conn.execute(
            "INSERT INTO api_keys (key_hash, key_id, tenant, created) VALUES (?, ?, ?, ?)",
            (digest(key), record.key_id, tenant, time.time()),
        )
        return key, record

    def revoke(self, key_id: str) -> bool:
        cur = self._conn.execute("UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                                 (time.time(), key_id))
        return cur.rowcount == 1

    def _find(self, key_hash: str) -> KeyRecord | None:
        row = self._conn.execute(
            "SELECT key_id, tenant FROM api_keys WHERE key_hash = ? AND revoked IS NULL", (key_hash,)
        ).fetchone()
        return KeyRecord(*row) if row else None

    async def lookup(self, key: str) -> KeyRecord | None:
        key_hash = digest(key)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self._lock:  # one connection, one thread at a time
            record = await asyncio.to_thread(self._find, key_hash)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key_hash] = (record, now + self._cache_s)
        return record

    def list(self, tenant: str | None = None) -> list[dict[str, object]]:
        sql = "SELECT key_id, tenant, created, revoked FROM api_keys"
        rows = self._conn.execute(sql + (" WHERE tenant = ?" if tenant else ""), (tenant,) if tenant else ())
        return [dict(zip(("key_id", "tenant", "created", "revoked"), r, strict=True)) for r in rows]

    def close(self) -> None:
        self._conn.close()


__all__ = ["KeyRecord", "KeyStore", "digest"]
