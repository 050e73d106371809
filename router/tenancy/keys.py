"""The gateway's directory in SQLite: API keys (shown once, stored as a SHA-256 hash) and the tenants.

Keys are 256-bit random tokens, so a plain SHA-256 is a sound digest (no password stretching
needed). A lookup finds the row by its digest, then compares the digests with
``hmac.compare_digest`` so the comparison itself takes the same time wherever they differ.

Lookups are cached for ``cache_s`` seconds. A key revoked or rotated in this process is dropped
from the cache at once; another process sharing the database sees the change when its cached
entry expires (``FEDROUTER_KEY_CACHE_S``). Expiry and scheduled revocation (a rotation's grace
period) are checked against the clock on every request, cached or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from router.config import RateLimits
from router.ledger.sqlite import connect
from router.tenancy.key_cache import KeyCache

T = TypeVar("T")

_PREFIX = "fr-"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    created REAL NOT NULL, revoked REAL
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, source TEXT NOT NULL, updated REAL NOT NULL
);
"""
# Columns added after the first release: older databases gain them at start.
_ADDED = {"name": "TEXT", "expires_at": "REAL", "models": "TEXT", "limits": "TEXT"}
_FIELDS = "key_id, tenant, name, created, expires_at, revoked, models, limits"
_CACHE_MAX = 100_000  # lookups held of each kind, known keys and unknown ones (see key_cache)
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    name: str | None = None
    created: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None  # may lie ahead: a rotated key's grace period
    models: frozenset[str] | None = None  # None = every model the tenant may use
    limits: RateLimits | None = None  # within the tenant's; None = only the tenant's apply

    def status(self, now: float) -> str:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self, now: float) -> dict[str, Any]:
        """What the admin API shows: never the secret, nor its hash."""
        return {
            "object": "api_key",
            "id": self.key_id,
            "tenant": self.tenant,
            "name": self.name,
            "created_at": self.created,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": self.status(now),
            "models": None if self.models is None else sorted(self.models),
            "limits": None if self.limits is None else self.limits.model_dump(exclude_none=True),
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _record(row: tuple[Any, ...]) -> KeyRecord:
    key_id, tenant, name, created, expires_at, revoked, models, limits = row
    return KeyRecord(
        key_id,
        tenant,
        name,
        created,
        expires_at,
        revoked,
        None if models is None else frozenset(orjson.loads(models)),
        None if limits is None else RateLimits.model_validate_json(limits),
    )


class KeyStore:
    """Keys and tenants in one SQLite file. The plain methods block (the CLI calls them); the
    gateway runs them through ``run``, one at a time on a worker thread."""

    def __init__(self, path: str, cache_s: float = 10.0, cache_max: int = _CACHE_MAX) -> None:
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(api_keys)")}
        for column, kind in _ADDED.items():
            if column not in have:
                self._conn.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")
        self._cache: KeyCache[KeyRecord] = KeyCache(cache_max)
        self._cache_s = cache_s
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._lock:  # one connection, used from one thread at a time
            return await asyncio.to_thread(fn, *args, **kwargs)

    # -- keys --------------------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        *,
        name: str | None = None,
        expires_at: float | None = None,
        models: Iterable[str] | None = None,
        limits: RateLimits | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key for the tenant: the secret (to show once) and its record."""
        key = _PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            "key_" + secrets.token_hex(6),
            tenant,
            name,
            time.time(),
            expires_at,
            None,
            None if models is None else frozenset(models),
            limits,
        )
        self._insert(digest(key), record)
        return key, record

    def import_hash(
        self,
        tenant: str,
        key_hash: str,
        *,
        name: str | None = None,
        models: Iterable[str] | None = None,
        limits: RateLimits | None = None,
    ) -> KeyRecord | None:
        """A key known only by the SHA-256 of its secret (hex), as another gateway stored it, so
        that its clients move without new keys: lookups digest a presented key the same way. None
        if a key with that hash is stored already."""
        if not _SHA256_HEX.match(key_hash):
            # Not echoed: a plaintext key given by mistake must not reach a terminal or a log.
            raise ValueError(f"not a SHA-256 hash: expected 64 hexadecimal digits, got {len(key_hash)} characters")
        key_hash = key_hash.lower()  # as hexdigest() writes it
        if self._conn.execute("SELECT 1 FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone():
            return None
        record = KeyRecord(
            "key_" + secrets.token_hex(6),
            tenant,
            name,
            time.time(),
            None,
            None,
            None if models is None else frozenset(models),
            limits,
        )
        self._insert(key_hash, record)
        return record

    def _insert(self, key_hash: str, r: KeyRecord) -> None:
        self._conn.execute(
            f"INSERT INTO api_keys (key_hash, {_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_hash,
                r.key_id,
                r.tenant,
                r.name,
                r.created,
                r.expires_at,
                r.revoked_at,
                None if r.models is None else orjson.dumps(sorted(r.models)).decode(),
                None if r.limits is None else r.limits.model_dump_json(exclude_none=True),
            ),
        )
        self._cache.pop(key_hash)  # a cached "no such key" must not outlive its creation

    def get(self, key_id: str) -> KeyRecord | None:
        row = self._conn.execute(f"SELECT {_FIELDS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return _record(row) if row else None

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        where, args = (" WHERE tenant = ?", (tenant,)) if tenant else ("", ())
        rows = self._conn.execute(f"SELECT {_FIELDS} FROM api_keys{where} ORDER BY created, key_id", args)
        return [_record(r) for r in rows]

    def revoke(self, key_id: str, at: float | None = None) -> KeyRecord | None:
        """Revoke now (or at ``at``); None if there is no such key or it is revoked already."""
        now = time.time()
        when = now if at is None else at
        cur = self._conn.execute(
            "UPDATE api_keys SET revoked = ? WHERE key_id = ? AND (revoked IS NULL OR revoked > ?)",
            (when, key_id, max(now, when)),
        )
        if cur.rowcount != 1:
            return None
        self._forget(key_id)
        return self.get(key_id)

    def rotate(self, key_id: str, grace_s: float = 0.0) -> tuple[str, KeyRecord] | None:
        """A new secret with the old key's settings; the old one is revoked after ``grace_s``.
        None if there is no such key or it is revoked already."""
        old = self.get(key_id)
        now = time.time()
        if old is None or old.status(now) == "revoked":
            return None
        key = _PREFIX + secrets.token_urlsafe(32)
        new = KeyRecord(
            "key_" + secrets.token_hex(6), old.tenant, old.name, now, old.expires_at, None, old.models, old.limits
        )
        self._conn.execute("BEGIN")
        try:
            self._insert(digest(key), new)
            self._conn.execute("UPDATE api_keys SET revoked = ? WHERE key_id = ?", (now + grace_s, key_id))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._forget(key_id)
        return key, new

    def _forget(self, key_id: str) -> None:
        row = self._conn.execute("SELECT key_hash FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row:
            self._cache.pop(row[0])

    def _find(self, key_hash: str) -> KeyRecord | None:
        row = self._conn.execute(f"SELECT key_hash, {_FIELDS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], key_hash):
            return None
        return _record(row[1:])

    async def lookup(self, key: str) -> KeyRecord | None:
        """The key's record if it is usable now: known, not revoked, not expired."""
        key_hash = digest(key)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and hit[1] > now:
            record = hit[0]
        else:
            async with self._lock:
                record = await asyncio.to_thread(self._find, key_hash)
                # Stored under the lock, so a revoke that ran meanwhile cannot be overwritten by this read.
                self._cache.put(key_hash, record, now + self._cache_s)
        return record if record is not None and record.status(time.time()) == "active" else None

    # -- tenants -----------------------------------------------------------------------------

    def tenants(self) -> list[tuple[str, str, str]]:
        """Every stored tenant: (name, spec as JSON, source)."""
        return list(self._conn.execute("SELECT name, spec, source FROM tenants ORDER BY name"))

    def put_tenant(self, name: str, spec: str, source: str) -> None:
        self._conn.execute(
            "INSERT INTO tenants (name, spec, source, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, source = excluded.source, "
            "updated = excluded.updated",
            (name, spec, source, time.time()),
        )

    def add_tenant(self, name: str, spec: str) -> bool:
        """Store a tenant created through the API; False if the name is taken."""
        try:
            self._conn.execute(
                "INSERT INTO tenants (name, spec, source, updated) VALUES (?, ?, 'api', ?)", (name, spec, time.time())
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def delete_tenant(self, name: str) -> None:
        """Remove an API tenant and revoke its keys."""
        now = time.time()
        self._conn.execute("BEGIN")
        try:
            self._conn.execute("DELETE FROM tenants WHERE name = ? AND source = 'api'", (name,))
            self._conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE tenant = ? AND (revoked IS NULL OR revoked > ?)",
                (now, name, now),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._cache.clear()

    def sync_config(self, declared: dict[str, str]) -> None:
        """Make the stored config tenants those of the config file: the file wins over the API."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for name, spec in declared.items():
                self.put_tenant(name, spec, "config")
            gone = [
                n
                for (n,) in self._conn.execute("SELECT name FROM tenants WHERE source = 'config'")
                if n not in declared
            ]
            self._conn.executemany("DELETE FROM tenants WHERE name = ?", [(n,) for n in gone])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()


__all__ = ["KeyRecord", "KeyStore", "digest"]
