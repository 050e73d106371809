"""Cost of admission on the request path: admit + settle with three rate buckets, a stream slot and
two budgets, in process and in Redis.

    python bench/admission_bench.py [--redis redis://127.0.0.1:6379/0] [-n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

from router.config import Budget, RateLimits
from router.ledger import open_ledger
from router.ledger.base import UsageRecord
from router.tenancy.admission.base import Demand
from router.tenancy.admission.memory import LocalAdmission
from router.tenancy.admission.redis import RedisAdmission
from router.tenancy.budgets import Amounts

LIMITS = RateLimits(requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_streams=10**6)
BUDGETS = (Budget(metric="usd", period="monthly", hard=1e6, soft=9e5), Budget(metric="kwh", period="daily", hard=1e6))
RECORD = UsageRecord(
    "r",
    time.time(),
    "acme",
    "dc1",
    "datacenter",
    None,
    "m1",
    "chat/completions",
    10,
    10,
    1e-5,
    1e-3,
    1.0,
    None,
    "ok",
    "upstream",
    1,
    True,
)


def demand() -> Demand:
    return Demand(
        "req_" + secrets.token_hex(6),
        "acme",
        "key_a",
        LIMITS,
        RateLimits(requests_per_minute=10**8),
        BUDGETS,
        300,
        Amounts(5000, 200, 0),
        True,
        time.time(),
    )


async def measure(impl, n: int) -> tuple[float, float]:
    async def one() -> None:
        await impl.settle(await impl.admit(demand()), RECORD)

    await one()  # the budgets' periods are read from the ledger once
    started = time.perf_counter()
    for _ in range(n):
        await one()
    sequential = (time.perf_counter() - started) / n
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return sequential, n / (time.perf_counter() - started)


async def main(redis_url: str | None, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = open_ledger(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        await ledger.start()
        impls = [("in process", LocalAdmission(ledger))]
        prefix = f"fedrouter-bench:{secrets.token_hex(4)}:"
        if redis_url:
            impls.append(("redis", RedisAdmission(redis_url, prefix, ledger, 600.0)))
        for name, impl in impls:
            sequential, rate = await measure(impl, n)
            print(f"{name:>10}: admit+settle {sequential * 1e6:7.1f} us one at a time; {rate:9,.0f}/s all at once")
            await impl.close()
        await ledger.close()
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", help="also measure RedisAdmission on this Redis")
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.n))
