"""One contract suite for every ledger store: SQLite, and the real PostgreSQL on 127.0.0.1:5432.

PostgreSQL tests run in a database made for this session and dropped at its end; they fail,
not skip, when the server is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from router.ledger import Ledger, open_ledger
from router.ledger.base import FIELDS, ROLLUP_COLUMNS, UsageRecord
from router.ledger.schema import SQLITE_MIGRATIONS
from tests.conftest import backend_entry
from tests.servers import admin

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
D1, D2, D3 = date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)
ALL = (date(2000, 1, 1), date(2100, 1, 1))


def ts_of(day: date, seconds: float = 3600.0) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + seconds


def make_record(
    i: int,
    *,
    tenant: str = "acme",
    ts: float | None = None,
    backend: str = "b1",
    model: str = "m1",
    billed: bool = True,
    attempt: int = 1,
    tokens: tuple[int, int] = (10, 5),
    request_id: str | None = None,
) -> UsageRecord:
    tin, tout = tokens
    return UsageRecord(
        request_id=request_id or f"req_{i:06d}",
        ts=ts if ts is not None else time.time(),
        tenant=tenant,
        backend=backend,
        backend_class="sovereign" if backend == "b2" else "datacenter",
        zone="FR" if backend == "b2" else None,
        model=model,
        endpoint="chat/completions",
        input_tokens=tin,
        output_tokens=tout,
        cost_usd=(tin * 0.15 + tout * 0.6) / 1e6 * (1 + i % 7),
        energy_wh=(tin + tout) * 0.3 / 3600,
        latency_ms=120.5 + i,
        ttft_ms=None if i % 2 else 33.3,
        outcome="ok",
        tokens_source="upstream",
        attempts=attempt,
        stream=bool(i % 2),
        attempt=attempt,
        kind="request" if billed else "retry",
        billed=billed,
        key_id=f"key_{tenant}",
        carbon_g=0.0,
        energy_source="declared",
        decision='{"candidates":[],"rejected":{}}',
    )


def mixed_records() -> list[UsageRecord]:
    """Several days, tenants, backends and models, billed events and unbilled retries."""
    out = []
    for i in range(60):
        day = (D1, D2, D3)[i % 3]
        out.append(
            make_record(
                i,
                tenant=("acme", "other")[i % 2],
                ts=ts_of(day, 60.0 * i),
                backend=("b1", "b2")[i % 4 // 2],
                model=("m1", "m2")[i % 5 // 4],
                tokens=(i + 1, 2 * i),
                billed=True,
                attempt=2 if i % 6 == 0 else 1,
            )
        )
        if i % 6 == 0:  # the failed first attempt of the same request, which still consumed tokens
            out.append(
                make_record(
                    i,
                    tenant=("acme", "other")[i % 2],
                    ts=ts_of(day, 60.0 * i),
                    backend="b2",
                    tokens=(i + 1, 3),
                    billed=False,
                    attempt=1,
                )
            )
    return out


async def _pg_create(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _pg_drop(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _blocking(fn: Callable[[str], Awaitable[None]], name: str) -> None:
    """Run on a loop of its own: the fixture may be set up while a test's loop is running."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(fn(name))).result()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = "fedrouter_test_" + secrets.token_hex(4)
    _blocking(_pg_create, name)
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    _blocking(_pg_drop, name)


OpenStore = Callable[..., Awaitable[Ledger]]


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens (and at the end closes) ledgers on one store, which starts empty."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DROP TABLE IF EXISTS usage_events, usage_daily, schema_version")
        finally:
            await conn.close()
    opened: list[Ledger] = []

    async def open_(retention_days: int | None = None) -> Ledger:
        ledger = open_ledger(url, retention_days)
        await ledger.start()
        opened.append(ledger)
        return ledger

    yield open_
    for ledger in opened:
        await ledger.close()


async def submit_all(ledger: Ledger, records: list[UsageRecord]) -> None:
    await asyncio.gather(*(ledger.submit(r) for r in records))


async def collect(it: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row async for row in it]


def dec(x: float | int) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


@pytest.mark.asyncio
async def test_submitted_record_is_durable_and_round_trips(open_store: OpenStore) -> None:
    ledger = await open_store()
    rec = make_record(1, ts=ts_of(D1))
    await ledger.submit(rec)
    await ledger.close()
    reopened = await open_store()
    [row] = await reopened.recent(10)
    assert row["event_id"] == "req_000001:1"
    assert UsageRecord(**{f: row[f] for f in FIELDS}) == rec


@pytest.mark.asyncio
async def test_duplicate_event_id_keeps_the_first_record(open_store: OpenStore) -> None:
    ledger = await open_store()
    first = make_record(1, ts=ts_of(D1), tokens=(10, 5))
    await ledger.submit(first)
    await ledger.submit(make_record(1, ts=ts_of(D1), tokens=(999, 999)))  # same request id and attempt
    await ledger.submit(make_record(1, ts=ts_of(D1), attempt=2, billed=False))  # another attempt: another event
    rows = await ledger.recent(10)
    assert sorted(r["event_id"] for r in rows) == ["req_000001:1", "req_000001:2"]
    totals = await ledger.totals("acme")
    assert (totals["requests"], totals["input_tokens"], totals["unbilled_events"]) == (1, 10, 1)


@pytest.mark.asyncio
async def test_replaying_every_event_twice_changes_nothing(open_store: OpenStore) -> None:
    ledger = await open_store()
    records = mixed_records()
    await submit_all(ledger, records)
    totals = {t: await ledger.totals(t) for t in ("acme", "other", None)}
    rollups = await collect(ledger.rollups(None, *ALL))
    await submit_all(ledger, records + records[::-1])  # twice more, in another order, concurrently
    assert {t: await ledger.totals(t) for t in ("acme", "other", None)} == totals
    assert await collect(ledger.rollups(None, *ALL)) == rollups
    assert len(await collect(ledger.events(None, *ALL))) == len(records)


@pytest.mark.asyncio
async def test_totals_equal_events_and_rollups_to_the_cent(open_store: OpenStore) -> None:
    ledger = await open_store()
    await submit_all(ledger, mixed_records())
    for tenant, (start, end) in [("acme", ALL), ("other", ALL), (None, ALL), ("acme", (D2, D3)), (None, (D2, D2))]:
        events = await collect(ledger.events(tenant, start, end))
        rollups = await collect(ledger.rollups(tenant, start, end))
        totals = await ledger.totals(tenant, start, end)
        billed = [e for e in events if e["billed"]]
        for figure in ("cost_usd", "energy_wh", "input_tokens", "output_tokens"):
            from_events = sum((dec(e[figure]) for e in billed), Decimal(0))
            from_rollups = sum((dec(r[figure]) for r in rollups), Decimal(0))
            assert abs(from_events - dec(totals[figure])) < Decimal("1e-9"), (tenant, figure)
            assert abs(from_rollups - dec(totals[figure])) < Decimal("1e-9"), (tenant, figure)
        unbilled_cost = sum((dec(e["cost_usd"]) for e in events if not e["billed"]), Decimal(0))
        assert abs(unbilled_cost - dec(totals["unbilled_cost_usd"])) < Decimal("1e-9")
        assert totals["requests"] == len(billed) == sum(r["requests"] for r in rollups)
        assert totals["unbilled_events"] == len(events) - len(billed)
        assert {r["day"] for r in rollups} <= {d.isoformat() for d in (D1, D2, D3) if start <= d <= end}


@pytest.mark.asyncio
async def test_retention_prunes_raw_events_but_keeps_rollups(open_store: OpenStore) -> None:
    today = datetime.now(UTC).date()
    old, recent = today - timedelta(days=40), today - timedelta(days=2)
    keeper = await open_store()
    records = [make_record(i, ts=ts_of(old if i < 30 else recent)) for i in range(50)]
    await submit_all(keeper, records)
    before = (await keeper.totals("acme"), await collect(keeper.rollups("acme", *ALL)))
    await keeper.close()

    pruning = await open_store(retention_days=30)
    assert await pruning.prune() == 30
    assert len(await collect(pruning.events("acme", *ALL))) == 20
    assert (await pruning.totals("acme"), await collect(pruning.rollups("acme", *ALL))) == before
    await submit_all(pruning, records[:5])  # a replay older than the window cannot be deduplicated: dropped
    assert await pruning.totals("acme") == before[0]
    assert await pruning.prune() == 0


@pytest.mark.asyncio
async def test_events_are_read_page_by_page(open_store: OpenStore) -> None:
    ledger = await open_store()
    await submit_all(ledger, [make_record(i, ts=ts_of(D1, i)) for i in range(250)])
    pages = ledger.events("acme", D1, D1, page_size=100)
    first = await anext(pages)
    # Written after the read began, later than every other event: a paged reader still meets it.
    await ledger.submit(make_record(999, ts=ts_of(D1, 80000)))
    rest = await collect(pages)
    ids = [first["event_id"]] + [e["event_id"] for e in rest]
    assert len(ids) == 251 and ids[-1] == "req_000999:1"
    assert ids[:250] == [f"req_{i:06d}:1" for i in range(250)]
    assert await collect(ledger.events("acme", D2, D3)) == []
    assert await collect(ledger.events("other", D1, D1)) == []


@pytest.mark.asyncio
async def test_a_thousand_concurrent_submits_land_exactly_once(open_store: OpenStore) -> None:
    ledger = await open_store()

    async def client(n: int) -> None:
        for j in range(20):
            await ledger.submit(make_record(n * 20 + j, ts=ts_of(D2, n)))

    await asyncio.gather(*(client(n) for n in range(50)))
    events = await collect(ledger.events("acme", D2, D2, page_size=333))
    assert len(events) == len({e["event_id"] for e in events}) == 1000
    totals = await ledger.totals("acme", D2, D2)
    assert totals["requests"] == 1000
    assert totals["input_tokens"] == 10_000


@pytest.mark.asyncio
async def test_enqueued_records_land_and_close_flushes_them(open_store: OpenStore) -> None:
    """``enqueue`` (nobody waits): the writer holds records to batch them, and close commits
    every one still held."""
    ledger = await open_store()
    for i in range(300):
        ledger.enqueue(make_record(i, ts=ts_of(D2, i)))
    await ledger.close()
    reopened = await open_store()
    totals = await reopened.totals("acme", D2, D2)
    assert (totals["requests"], totals["input_tokens"]) == (300, 3000)


@pytest.mark.asyncio
async def test_an_enqueued_record_that_fails_is_logged_and_spares_its_batch(
    open_store: OpenStore, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = await open_store()
    bad = dataclasses.replace(make_record(7, ts=ts_of(D2)), tenant=None)  # NOT NULL
    caplog.set_level(logging.ERROR, logger="fedrouter.ledger")
    for rec in (make_record(1, ts=ts_of(D2)), bad, make_record(2, ts=ts_of(D2))):
        ledger.enqueue(rec)
    await ledger.submit(make_record(3, ts=ts_of(D2)))  # queued behind them: one batch, whose commit fails
    await ledger.close()
    [lost] = [r.getMessage() for r in caplog.records if r.name == "fedrouter.ledger"]
    assert lost.startswith("usage record req_000007:1 (tenant None, backend b1) was not recorded")
    reopened = await open_store()
    assert sorted(r["request_id"] for r in await reopened.recent(10)) == ["req_000001", "req_000002", "req_000003"]


@pytest.mark.asyncio
async def test_payouts_per_backend(open_store: OpenStore) -> None:
    ledger = await open_store()
    records = mixed_records()
    await submit_all(ledger, records)
    payouts = {p["backend"]: p for p in await ledger.payouts(*ALL)}
    assert set(payouts) == {"b1", "b2"}
    for name, p in payouts.items():
        mine = [r for r in records if r.backend == name]
        assert p["requests"] == sum(r.billed for r in mine)
        assert p["input_tokens"] == sum(r.input_tokens for r in mine if r.billed)
        assert p["revenue_usd"] == pytest.approx(sum(r.cost_usd for r in mine if r.billed), abs=1e-12)
        assert p["energy_wh"] == pytest.approx(sum(r.energy_wh for r in mine), abs=1e-12)  # unbilled too
        assert p["unbilled_events"] == sum(not r.billed for r in mine)
    assert payouts["b2"]["backend_class"] == "sovereign" and payouts["b2"]["zone"] == "FR"
    assert await ledger.payouts(date(1999, 1, 1), date(1999, 1, 2)) == []


@pytest.mark.asyncio
async def test_rollups_are_kept_per_day_tenant_backend_and_model(open_store: OpenStore) -> None:
    ledger = await open_store()
    await submit_all(ledger, mixed_records())
    rollups = await collect(ledger.rollups(None, *ALL))
    keys = [(r["day"], r["tenant"], r["backend"], r["model"]) for r in rollups]
    assert keys == sorted(set(keys))
    assert set(rollups[0]) == set(ROLLUP_COLUMNS)
    assert all(r["energy_source"] == "declared" for r in rollups)


@pytest.mark.asyncio
async def test_sqlite_migrates_a_first_release_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SQLITE_MIGRATIONS[0][0] + ";")
    conn.execute(
        "INSERT INTO usage VALUES ('req_a', ?, 'acme', 'b1', 'datacenter', NULL, 'm1', 'chat/completions', "
        "10, 5, 0.25, 0.5, 100.0, NULL, 'ok', 'upstream', 2, 0)",
        (ts_of(D1),),
    )
    conn.commit()
    conn.close()
    ledger = open_ledger(f"sqlite:///{path}")
    await ledger.start()
    try:
        [row] = await ledger.recent()
        assert (row["event_id"], row["kind"], row["billed"], row["energy_source"]) == (
            "req_a:2",
            "request",
            True,
            "declared",
        )
        totals = await ledger.totals("acme", D1, D1)
        assert (totals["requests"], totals["cost_usd"]) == (1, 0.25)
    finally:
        await ledger.close()
    versions = sqlite3.connect(path)
    assert versions.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    versions.close()


def test_gateway_with_unawaited_ledger_still_records_every_request(start_sim_backend, start_gateway):
    """FEDROUTER_LEDGER_DURABLE=false: answers do not wait for the commit, records still land."""
    sim = start_sim_backend("nowait")
    config = {"backends": [backend_entry(sim)], "tenants": [{"name": "acme"}]}
    with start_gateway(**config, settings={"ledger_durable": False}) as gw:
        url = gw.url
        key = httpx.post(url + "/admin/v1/keys", headers=admin(), json={"tenant": "acme"}).json()["key"]
        ids = set()
        for stream in (False, True, False):
            r = httpx.post(
                url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": stream},
            )
            assert r.status_code == 200
            ids.add(r.headers["x-request-id"])
        deadline = time.monotonic() + 5
        seen: set[str] = set()
        while seen != ids and time.monotonic() < deadline:
            recent = httpx.get(url + "/admin/v1/usage", params={"tenant": "acme"}, headers=admin()).json()["recent"]
            seen = {row["request_id"] for row in recent}
            time.sleep(0.05)
    assert seen == ids


@pytest.mark.asyncio
async def test_sqlite_wal_stays_bounded_under_steady_commits(tmp_path: Path) -> None:
    """Checkpoints run beside the writer, and under steady load one never completes on its own;
    the WAL must still start over, not grow for as long as the load lasts."""
    from router.ledger.sqlite import SQLiteLedger

    ledger = SQLiteLedger(str(tmp_path / "wal.db"), wal_restart_frames=256, checkpoint_every_s=0.05)
    await ledger.start()
    wal = tmp_path / "wal.db-wal"
    limit = 16 * 1024 * 1024
    frame = 4096 + 24
    try:
        began, i, largest = time.monotonic(), 0, 0
        # One record per commit, back to back: the worst case. Enough commits that a WAL which
        # never started over would pass the limit even at one page per commit.
        while i < limit // frame + 500 and time.monotonic() - began < 20:
            await ledger.submit(make_record(i))
            i += 1
            if i % 100 == 0:
                largest = max(largest, wal.stat().st_size)
        assert (await ledger.totals())["requests"] == i
    finally:
        await ledger.close()
    assert i > limit // frame, f"too few commits ({i}) to tell"
    assert largest < limit, f"the WAL grew to {largest} bytes over {i} commits"
