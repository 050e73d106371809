"""What the shared state costs one request on the hot path: the StatsBook calls a request makes
(refresh of ejections, a view per candidate, counters, in-flight, outcome), timed per request,
with the in-process store and with Redis (ejections re-read when older than 5 ms, or always).

    python bench/state_cost.py [--requests 5000] [--redis redis://127.0.0.1:6379/0]

Needs a Redis; writes only under a fresh prefix, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from redis.asyncio import Redis

from router.config import RoutingConfig
from router.fleet.backend_stats import EjectionPolicy, StatsBook
from router.state import MemoryStore
from router.state.redis import RedisStore

BACKENDS = ["a", "b", "c"]


async def one_request(book: StatsBook) -> None:
    await book.refresh("m1")
    for name in BACKENDS:
        book.view(name, "m1")
    book.count("requests")
    book.started("a", "m1")
    book.answered("a", "m1", probe=False)
    book.finished("a", "m1")
    book.success("a", "m1", 0.05, 16, 0.1)


async def measure(book: StatsBook, n: int, gap_s: float) -> list[float]:
    await book.start()
    try:
        for _ in range(200):  # warm up
            await one_request(book)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await one_request(book)
            times.append((time.perf_counter() - started) * 1e6)
            if gap_s:
                await asyncio.sleep(gap_s)
        return times
    finally:
        await book.close()


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=100)
    return f"p50 {q[49]:7.1f} µs   p99 {q[98]:7.1f} µs   mean {statistics.fmean(times):7.1f} µs"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = f"fedrouter-bench-{uuid.uuid4().hex}:"
    policy = EjectionPolicy.of(RoutingConfig())
    groups = {"m1": BACKENDS}
    cases = [
        ("memory, back to back", lambda: MemoryStore("r"), 0.005, 0.0),
        ("memory, 1 ms apart", lambda: MemoryStore("r"), 0.005, 0.001),
        ("redis, freshness 5 ms, back to back", lambda: RedisStore(args.redis, prefix, "r"), 0.005, 0.0),
        ("redis, freshness 5 ms, 1 ms apart", lambda: RedisStore(args.redis, prefix, "r"), 0.005, 0.001),
        ("redis, freshness 0 (a read per request)", lambda: RedisStore(args.redis, prefix, "r"), 0.0, 0.0),
    ]
    try:
        for label, store, freshness, gap in cases:
            book = StatsBook(store(), policy, groups, freshness_s=freshness)
            n = args.requests if not gap else args.requests // 5
            print(f"{label:42s} {summary(await measure(book, n, gap))}")
    finally:
        client = Redis.from_url(args.redis)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
