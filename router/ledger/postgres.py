"""PostgreSQL ledger (asyncpg): the SQLite ledger's schema and semantics, for many gateways at once.

Group commit: one writer task takes every record queued at that moment and writes the batch in a
single statement, one round trip: the events go in through ``unnest`` of one array per column
with ON CONFLICT (event_id) DO NOTHING, and the rows actually inserted (RETURNING) are summed
into the daily rollups by the same statement, so a replayed event adds nothing to either.
asyncpg is imported only when a postgresql:// ledger is configured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import date
from typing import TYPE_CHECKING, Any

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
from router.ledger.schema import (
    EVENT_TYPES,
    POSTGRES_MIGRATIONS,
    ROLLUP_KEY,
    ROLLUP_SOURCES,
    rollup_select,
    rollup_upsert_set,
)

if TYPE_CHECKING:
    import asyncpg

_ARRAY = {"text": "text[]", "float": "float8[]", "int": "int4[]", "bool": "bool[]"}
_INSERT = (
    f"WITH ins AS (INSERT INTO usage_events ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{_ARRAY[t]}" for i, t in enumerate(EVENT_TYPES.values(), start=1))
    + ") ON CONFLICT (event_id) DO NOTHING RETURNING *) "
    f"INSERT INTO usage_daily ({', '.join(ROLLUP_COLUMNS)}) {rollup_select('postgres', 'ins')} "
    f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {rollup_upsert_set()}"
)
_COUNTS = frozenset(c for c, src in ROLLUP_SOURCES.items() if src is None or src.endswith("tokens"))
_MAX_BATCH = 1000
_LOCK_KEY = 0x66656472  # advisory lock id serialising migrations across gateway processes


async def migrate(conn: asyncpg.Connection) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
        )
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        for version, statements in enumerate(POSTGRES_MIGRATIONS[current:], start=current + 1):
            for sql in statements:
                await conn.execute(sql)
            await conn.execute("INSERT INTO schema_version (version, applied) VALUES ($1, $2)", version, time.time())
    return len(POSTGRES_MIGRATIONS)


class PostgresLedger(BatchingWriter):
    def __init__(self, url: str, retention_days: int | None = None, pool_size: int = 4) -> None:
        self._items: asyncio.Queue[Item | None] = asyncio.Queue()  # the base's, typed for the blocking get
        super().__init__(self._items, asyncio.QueueEmpty, _MAX_BATCH, retention_days)
        self._url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=self._pool_size)
        async with self._pool.acquire() as conn:
            await migrate(conn)
        self._writer = asyncio.create_task(self._write_loop(), name="ledger-writer")
        self._pruner = self._retention.start(self)

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            item = await self._items.get()
            if item is STOP:
                return
            if item[1] is None:
                await asyncio.sleep(LINGER_S)  # nobody waits for this one: gather more first
            batch, stop = self._gather(item)
            await self._commit(batch)

    async def _commit(self, batch: list[Item]) -> None:
        import asyncpg

        columns = list(zip(*(row_of(rec) for rec, _ in batch), strict=True))
        error: BaseException | None = None
        try:
            async with self._acquire() as conn:
                await conn.execute(_INSERT, *columns)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if len(batch) > 1:  # one bad record must not fail the requests batched with it
                for one in batch:
                    await self._commit([one])
                return
            error = exc
        if error is not None:
            lost([rec for rec, fut in batch if fut is None], error)
        for _, fut in batch:
            if fut is not None:
                resolve(fut, error)

    def _acquire(self) -> Any:
        assert self._pool is not None, "ledger not started"
        return self._pool.acquire()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._acquire() as conn:
            return await conn.fetch(sql, *args)

    async def totals(
        self, tenant: str | None = None, since: date | None = None, until: date | None = None
    ) -> dict[str, Any]:
        where, args = _rollup_where(tenant, since, until)
        sums = ", ".join(f"COALESCE(SUM({c}), 0){'::bigint' if c in _COUNTS else ''} AS {c}" for c in ROLLUP_SOURCES)
        rows = await self._fetch(f"SELECT {sums} FROM usage_daily {where}", *args)
        return dict(rows[0])

    async def recent(self, limit: int = 50, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE tenant = $2", (tenant,)) if tenant else ("", ())
        rows = await self._fetch(
            f"SELECT * FROM usage_events {where} ORDER BY ts DESC, event_id DESC LIMIT $1", limit, *args
        )
        return [dict(r) for r in rows]

    async def events(
        self, tenant: str | None, start: date, end: date, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        lo, hi = day_bounds(start, end)
        scope, scope_args = ("tenant = $5 AND ", (tenant,)) if tenant else ("", ())
        after: tuple[float, str] = (lo, "")
        while True:
            rows = await self._fetch(
                f"SELECT * FROM usage_events WHERE {scope}ts < $1 AND (ts, event_id) > ($2, $3) "
                "ORDER BY ts, event_id LIMIT $4",
                hi,
                *after,
                page_size,
                *scope_args,
            )
            for row in rows:
                yield dict(row)
            if len(rows) < page_size:
                return
            after = (rows[-1]["ts"], rows[-1]["event_id"])

    async def rollups(
        self, tenant: str | None, start: date, end: date, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        where, args = _rollup_where(tenant, start, end)
        n = len(args)
        key = ", ".join(ROLLUP_KEY)
        after: tuple[Any, ...] = (date.min, "", "", "")
        while True:
            rows = await self._fetch(
                f"SELECT {', '.join(ROLLUP_COLUMNS)} FROM usage_daily {where} AND ({key}) > "
                f"(${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}) ORDER BY {key} LIMIT ${n + 5}",
                *args,
                *after,
                page_size,
            )
            for row in rows:
                yield {**row, "day": row["day"].isoformat()}
            if len(rows) < page_size:
                return
            after = tuple(rows[-1][c] for c in ROLLUP_KEY)

    async def payouts(self, start: date, end: date) -> list[dict[str, Any]]:
        where, args = _rollup_where(None, start, end)
        rows = await self._fetch(
            "SELECT backend, MAX(backend_class), MAX(zone), SUM(requests)::bigint, SUM(input_tokens)::bigint, "
            "SUM(output_tokens)::bigint, SUM(cost_usd), SUM(energy_wh + unbilled_energy_wh), "
            "SUM(carbon_g + unbilled_carbon_g), SUM(unbilled_events)::bigint, "
            "SUM(unbilled_input_tokens + unbilled_output_tokens)::bigint, SUM(unbilled_energy_wh) "
            f"FROM usage_daily {where} GROUP BY backend ORDER BY backend",
            *args,
        )
        return [dict(zip(PAYOUT_COLUMNS, r, strict=True)) for r in rows]

    async def prune(self) -> int:
        cutoff = self._retention.cutoff()
        if cutoff is None:
            return 0
        async with self._acquire() as conn:
            status = await conn.execute("DELETE FROM usage_events WHERE ts < $1", cutoff)
        return int(status.split()[-1])

    async def close(self) -> None:
        await stop_task(self._pruner)
        self._pruner = None
        if self._writer is not None:
            self._queue.put_nowait(STOP)
            await self._writer
            self._writer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _rollup_where(tenant: str | None, since: date | None, until: date | None) -> tuple[str, tuple[Any, ...]]:
    conds: list[str] = []
    args: list[Any] = []
    for cond, value in (("tenant = ", tenant), ("day >= ", since), ("day <= ", until)):
        if value is not None:
            args.append(value)
            conds.append(f"{cond}${len(args)}")
    return "WHERE " + " AND ".join(conds or ["TRUE"]), tuple(args)
