"""SQLite ledger: WAL mode and group commit from one writer thread.

A record is durable once its batch's COMMIT has returned: with WAL and synchronous=NORMAL the
transaction is in the WAL file, which survives the gateway being killed (not a power cut).
Batching every record waiting at that moment into one transaction keeps this cheap under load.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from typing import Any

from router.ledger.base import COLUMNS, UsageRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL, tenant TEXT NOT NULL, backend TEXT NOT NULL, backend_class TEXT NOT NULL,
    zone TEXT, model TEXT NOT NULL, endpoint TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, energy_wh REAL NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL,
    outcome TEXT NOT NULL, tokens_source TEXT NOT NULL, attempts INTEGER NOT NULL, stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_tenant_ts ON usage (tenant, ts);
"""
_INSERT = f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_MAX_BATCH = 512
_STOP = None


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SQLiteLedger:
    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[tuple[UsageRecord, asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        conn = connect(self._path)
        conn.executescript(_SCHEMA)
        self._thread = threading.Thread(target=self._write_loop, args=(conn,), name="ledger-writer", daemon=True)
        self._thread.start()
        self._reader = conn if self._path == ":memory:" else connect(self._path)

    def submit(self, record: UsageRecord) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((record, fut))
        return fut

    def pending(self) -> int:
        return self._queue.qsize()

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            error: BaseException | None = None
            try:
                conn.execute("BEGIN")
                conn.executemany(_INSERT, [_row(rec) for rec, _ in batch])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK") if conn.in_transaction else None
                error = exc
            for _, fut in batch:
                fut.get_loop().call_soon_threadsafe(_resolve, fut, error)
        if self._path != ":memory:":
            conn.close()

    async def _read(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        assert self._reader is not None, "ledger not started"
        reader = self._reader

        def run() -> list[sqlite3.Row]:
            reader.row_factory = sqlite3.Row
            return reader.execute(sql, args).fetchall()

        async with self._lock:  # one reader connection, used from one thread at a time
            return await asyncio.to_thread(run)

    async def totals(self, tenant: str | None = None) -> dict[str, Any]:
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant else ("", ())
        rows = await self._read(
            "SELECT COUNT(*) AS requests, COALESCE(SUM(input_tokens), 0) AS input_tokens, "
            "COALESCE(SUM(output_tokens), 0) AS output_tokens, COALESCE(SUM(cost_usd), 0) AS cost_usd, "
            f"COALESCE(SUM(energy_wh), 0) AS energy_wh FROM usage {where}",
            args,
        )
        return dict(rows[0])

    async def recent(self, limit: int = 50, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE tenant = ?", (tenant, limit)) if tenant else ("", (limit,))
        rows = await self._read(f"SELECT * FROM usage {where} ORDER BY ts DESC LIMIT ?", args)
        return [dict(r) for r in rows]

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._reader is not None and self._path != ":memory:":
            self._reader.close()
        self._reader = None


def _row(rec: UsageRecord) -> tuple[Any, ...]:
    return tuple(getattr(rec, c) for c in COLUMNS)


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
