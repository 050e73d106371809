"""Ledger throughput: usage records made durable per second, SQLite and PostgreSQL, with group commit.

Usage: ``python bench/ledger_bench.py [--records 20000] [--tasks 200] [--pg postgresql://postgres@127.0.0.1:5432]``.
Each of ``--tasks`` concurrent tasks submits its share of records one at a time and awaits each
record's durability, as the gateway does per request. PostgreSQL runs in a database made for the
run and dropped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from router.ledger import open_ledger
from router.ledger.base import UsageRecord


def record(i: int, run: str) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{run}_{i:08d}",
        ts=time.time(),
        tenant=f"tenant{i % 10}",
        backend=f"backend{i % 4}",
        backend_class="datacenter",
        zone="FR",
        model=f"model{i % 3}",
        endpoint="chat/completions",
        input_tokens=100 + i % 50,
        output_tokens=200,
        cost_usd=0.00012 * (1 + i % 5),
        energy_wh=0.02,
        latency_ms=250.0,
        ttft_ms=40.0,
        outcome="ok",
        tokens_source="upstream",
        attempts=1,
        stream=bool(i % 2),
        key_id="key_bench",
        energy_source="declared",
        decision='{"candidates":[{"backend":"backend0","score":0.91}],"rejected":{}}',
    )


async def run(url: str, records: int, tasks: int) -> tuple[float, float, float]:
    """(records/s, p50 ms, p99 ms) of submit-to-durable for one store."""
    ledger = open_ledger(url)
    await ledger.start()
    run_id = secrets.token_hex(3)
    waits: list[float] = []
    per_task = records // tasks

    async def client(n: int) -> None:
        for j in range(per_task):
            t0 = time.perf_counter()
            await ledger.submit(record(n * per_task + j, run_id))
            waits.append(time.perf_counter() - t0)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(n) for n in range(tasks)))
        elapsed = time.perf_counter() - started
        assert (await ledger.totals())["requests"] == per_task * tasks, "every record must land exactly once"
    finally:
        await ledger.close()
    waits.sort()
    return per_task * tasks / elapsed, statistics.median(waits) * 1000, waits[int(len(waits) * 0.99)] * 1000


async def with_pg_database(server: str, records: int, tasks: int) -> tuple[float, float, float]:
    import asyncpg

    name = "fedrouter_bench_" + secrets.token_hex(4)
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            return await run(f"{server}/{name}", records, tasks)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="server URL, without a database")
    p.add_argument("--no-pg", action="store_true")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(
            (
                "sqlite (WAL, synchronous=NORMAL)",
                asyncio.run(run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.records, args.tasks)),
            )
        )
    if not args.no_pg:
        rows.append(("postgresql (asyncpg, unnest)", asyncio.run(with_pg_database(args.pg, args.records, args.tasks))))
    print(f"{args.records} records from {args.tasks} concurrent tasks, each awaiting durability")
    print(f"{'store':<34} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (rate, p50, p99) in rows:
        print(f"{name:<34} {rate:>10,.0f} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    main()
