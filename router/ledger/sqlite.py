"""SQLite ledger: WAL mode and group commit from one writer thread.

A record is durable once its batch's COMMIT has returned: with WAL and synchronous=NORMAL the
transaction is in the WAL file, which survives the gateway being killed (not a power cut).
Batching every record waiting at that moment into one transaction keeps this cheap under load.
The daily rollups are kept by a trigger inside that same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import date
from typing import Any

from router.ledger.base import (
    COLUMNS,
    LINGER_S,
    PAYOUT_COLUMNS,
    ROLLUP_COLUMNS,
    day_bounds,
    lost,
    resolve,
    row_of,
    stop_task,
)
from router.ledger.batching import STOP, BatchingWriter, Item
from router.ledger.schema import ROLLUP_SOURCES, SQLITE_MIGRATIONS

_INSERT = (
    f"INSERT INTO usage_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (event_id) DO NOTHING"
)
_MAX_BATCH = 512
_CHECKPOINT_EVERY_S = 0.2  # often enough that the WAL holds a fraction of a second of commits
# WAL frames (pages) past which the writer finishes a checkpoint itself (see _checkpoint_loop).
_WAL_RESTART_FRAMES = 4096
_WAL_KEEP_BYTES = 64 * 1024 * 1024  # a WAL file larger than this is truncated when it restarts
_PRUNE_CHUNK = 5000


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA journal_size_limit={_WAL_KEEP_BYTES}")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migration steps; returns the schema version. BEGIN IMMEDIATE takes the write
    lock first, so two gateway processes starting together migrate once, one after the other."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version, statements in enumerate(SQLITE_MIGRATIONS[current:], start=current + 1):
            for sql in statements:
                conn.execute(sql)
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(SQLITE_MIGRATIONS)


class SQLiteLedger(BatchingWriter):
    def __init__(
        self,
        path: str,
        retention_days: int | None = None,
        *,
        wal_restart_frames: int = _WAL_RESTART_FRAMES,
        checkpoint_every_s: float = _CHECKPOINT_EVERY_S,
    ) -> None:
        self._items: queue.SimpleQueue[Item | None] = queue.SimpleQueue()  # the base's, typed for the blocking get
        super().__init__(self._items, queue.Empty, _MAX_BATCH, retention_days)
        self._path = path
        self._wal_restart_frames = wal_restart_frames
        self._checkpoint_every_s = checkpoint_every_s
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._pruner: asyncio.Task[None] | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wal_restart = threading.Event()  # set by the checkpointer, cleared by the writer

    async def start(self) -> None:
        conn = connect(self._path)
        await asyncio.to_thread(migrate, conn)
        self._thread = threading.Thread(target=self._write_loop, args=(conn,), name="ledger-writer", daemon=True)
        self._thread.start()
        if self._path != ":memory:":
            # SQLite checkpoints the WAL inside whichever commit crosses its threshold, and the
            # fsyncs of a checkpoint then stall that commit (and the responses waiting on it) for
            # milliseconds. The writer never checkpoints; this thread does, beside it, PASSIVE.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(connect(self._path),), name="ledger-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._reader = conn if self._path == ":memory:" else connect(self._path)
        self._reader.row_factory = sqlite3.Row
        self._pruner = self._retention.start(self)

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            item = self._items.get()
            if item is STOP:
                break
            if item[1] is None:
                # Nobody waits for this one: gather more first. A commit per record or two would
                # take the GIL from the event loop thousands of times a second.
                time.sleep(LINGER_S)
            batch, stop = self._gather(item)
            self._commit(conn, batch)
            if self._wal_restart.is_set():
                self._wal_restart.clear()
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if self._path != ":memory:":
            conn.close()

    def _checkpoint_loop(self, conn: sqlite3.Connection) -> None:
        """Copies the WAL into the database beside the writer, so that its commits never wait
        for a checkpoint's fsyncs. Under steady load such a checkpoint never quite completes
        (the writer keeps appending), and the WAL only starts over from its beginning once one
        has: so when it has grown long, the writer runs a last one between two commits, which
        finds little left to copy."""
        while not self._stopping.wait(self._checkpoint_every_s):
            if self._wal_restart.is_set():
                # The writer's own last checkpoint is due: one running here at the same time
                # would make it busy, and the WAL would never start over.
                continue
            try:
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                continue  # a missed one only lets the WAL grow until the next
            if frames >= self._wal_restart_frames:
                self._wal_restart.set()
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[Item]) -> None:
        error = _write(conn, [row_of(rec) for rec, _ in batch])
        if error is not None and len(batch) > 1:
            # One bad record must not fail the requests batched with it: write them one by one.
            for item in batch:
                self._commit(conn, [item])
            return
        if error is not None:
            lost([rec for rec, fut in batch if fut is None], error)
        # One wake-up of each event loop per batch, not one per record: every
        # call_soon_threadsafe writes to the loop's self-pipe.
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, fut in batch:
            if fut is not None:
                by_loop.setdefault(fut.get_loop(), []).append(fut)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve_all, futures, error)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        assert self._reader is not None, "ledger not started"
        reader = self._reader
        async with self._lock:  # one reader connection, used from one thread at a time
            return await asyncio.to_thread(fn, reader)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return await self._read(lambda conn: conn.execute(sql, args).fetchall())

    async def totals(
        self, tenant: str | None = None, since: date | None = None, until: date | None = None
    ) -> dict[str, Any]:
        where, args = _rollup_where(tenant, since, until)
        sums = ", ".join(f"COALESCE(SUM({c}), 0) AS {c}" for c in ROLLUP_SOURCES)
        rows = await self._fetch(f"SELECT {sums} FROM usage_daily {where}", args)
        return dict(rows[0])

    async def recent(self, limit: int = 50, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE tenant = ?", (tenant, limit)) if tenant else ("", (limit,))
        rows = await self._fetch(f"SELECT * FROM usage_events {where} ORDER BY ts DESC, event_id DESC LIMIT ?", args)
        return [_event(r) for r in rows]

    async def events(
        self, tenant: str | None, start: date, end: date, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        lo, hi = day_bounds(start, end)
        scope, scope_args = ("tenant = ? AND ", (tenant,)) if tenant else ("", ())
        after: tuple[float, str] = (lo, "")
        while True:
            rows = await self._fetch(
                f"SELECT * FROM usage_events WHERE {scope}ts < ? AND (ts, event_id) > (?, ?) "
                "ORDER BY ts, event_id LIMIT ?",
                (*scope_args, hi, *after, page_size),
            )
            for row in rows:
                yield _event(row)
            if len(rows) < page_size:
                return
            after = (rows[-1]["ts"], rows[-1]["event_id"])

    async def rollups(
        self, tenant: str | None, start: date, end: date, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        where, args = _rollup_where(tenant, start, end)
        key = "(day, tenant, backend, model)"
        after: tuple[str, ...] = ("", "", "", "")
        while True:
            rows = await self._fetch(
                f"SELECT {', '.join(ROLLUP_COLUMNS)} FROM usage_daily {where} AND {key} > (?, ?, ?, ?) "
                f"ORDER BY {key[1:-1]} LIMIT ?",
                (*args, *after, page_size),
            )
            for row in rows:
                yield dict(row)
            if len(rows) < page_size:
                return
            after = tuple(rows[-1][c] for c in ("day", "tenant", "backend", "model"))

    async def payouts(self, start: date, end: date) -> list[dict[str, Any]]:
        where, args = _rollup_where(None, start, end)
        rows = await self._fetch(
            "SELECT backend, MAX(backend_class), MAX(zone), SUM(requests), SUM(input_tokens), SUM(output_tokens), "
            "SUM(cost_usd), SUM(energy_wh + unbilled_energy_wh), SUM(carbon_g + unbilled_carbon_g), "
            "SUM(unbilled_events), SUM(unbilled_input_tokens + unbilled_output_tokens), SUM(unbilled_energy_wh) "
            f"FROM usage_daily {where} GROUP BY backend ORDER BY backend",
            args,
        )
        return [dict(zip(PAYOUT_COLUMNS, r, strict=True)) for r in rows]

    async def prune(self) -> int:
        cutoff = self._retention.cutoff()
        if cutoff is None:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            total = 0
            while True:  # small transactions, so the writer thread never waits long
                n = conn.execute(
                    "DELETE FROM usage_events WHERE rowid IN (SELECT rowid FROM usage_events WHERE ts < ? LIMIT ?)",
                    (cutoff, _PRUNE_CHUNK),
                ).rowcount
                total += n
                if n < _PRUNE_CHUNK:
                    return total

        return await self._read(run)

    async def close(self) -> None:
        await stop_task(self._pruner)
        self._pruner = None
        if self._thread is not None:
            self._queue.put_nowait(STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._checkpointer is not None:
            self._stopping.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._reader is not None and self._path != ":memory:":
            self._reader.close()
        self._reader = None


def _resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        resolve(fut, error)


def _write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> BaseException | None:
    try:
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return exc
    return None


def _rollup_where(tenant: str | None, since: date | None, until: date | None) -> tuple[str, tuple[Any, ...]]:
    conds: list[str] = []
    args: list[Any] = []
    for cond, value in (("tenant = ?", tenant), ("day >= ?", since), ("day <= ?", until)):
        if value is not None:
            conds.append(cond)
            args.append(value.isoformat() if isinstance(value, date) else value)
    return "WHERE " + " AND ".join(conds or ["1 = 1"]), tuple(args)


def _event(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["stream"] = bool(out["stream"])
    out["billed"] = bool(out["billed"])
    return out
