"""One contract suite for every Store: in process and on the real Redis at 127.0.0.1:6379.

Each test gets two replicas of one store (two clients of one Redis, under a prefix unique to
the test, or two views of one in-process space), as two gateway processes would see it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from router.state import Batch, Ejection, MemorySpace, MemoryStore, Store
from router.state.redis import RedisStore
from router.state.samples import Sample

REDIS_URL = "redis://127.0.0.1:6379/0"


class Replica:
    """A store with the ejection notifications it heard."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.heard: list[tuple[str, Ejection | None]] = []
        self._news = asyncio.Event()

    def listen(self, key: str, ejection: Ejection | None) -> None:
        self.heard.append((key, ejection))
        self._news.set()

    async def hears(self, event: tuple[str, Ejection | None], within: float = 2.0) -> bool:
        async with asyncio.timeout(within):
            while event not in self.heard:
                self._news.clear()
                await self._news.wait()
        return True


@pytest_asyncio.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Replica, Replica]]:
    if request.param == "memory":
        space = MemorySpace()
        a, b = Replica(MemoryStore("a", space)), Replica(MemoryStore("b", space))
    else:
        prefix = f"fedrouter-test-{uuid.uuid4().hex}:"
        a, b = Replica(RedisStore(REDIS_URL, prefix, "a")), Replica(RedisStore(REDIS_URL, prefix, "b"))
    for r in (a, b):
        await r.store.start(r.listen)
    yield a, b
    for r in (a, b):
        await r.store.close()
    if request.param == "redis":
        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _sample(ts: float, sid: str, ok: bool = True) -> tuple[float, bytes]:
    return ts, Sample(ts, ok, 0.1 if ok else None, 50.0 if ok else None, sid).encode()


@pytest.mark.asyncio
async def test_samples_are_shared_newest_kept(pair):
    a, b = pair
    now = time.time()
    rows = [_sample(now - 10 + i, f"a:{i}") for i in range(6)]
    await a.store.push(Batch(samples={"x/m": rows}), keep=4, ttl_s=60)
    snap = await b.store.pull(["x/m", "y/m"], 0.0, [], ttl_s=5)
    got = [Sample.decode(raw) for raw in snap.samples["x/m"]]
    assert [s.id for s in got if s] == ["a:2", "a:3", "a:4", "a:5"], "the newest `keep`, oldest first"
    assert "y/m" not in snap.samples
    newer = await b.store.pull(["x/m"], now - 6.5, [], ttl_s=5)
    assert [Sample.decode(r).id for r in newer.samples["x/m"]] == ["a:4", "a:5"]  # type: ignore[union-attr]
    # a replica reads its own samples back too (they are deduplicated by id, not hidden)
    mine = await a.store.pull(["x/m"], 0.0, [], ttl_s=5)
    assert len(mine.samples["x/m"]) == 4


@pytest.mark.asyncio
async def test_counters_add_up_and_exclude_own(pair):
    a, b = pair
    bucket = int(time.time())
    await a.store.push(Batch(counts={bucket: {"requests": 3, "retries": 1}}), keep=10, ttl_s=30)
    await a.store.push(Batch(counts={bucket: {"requests": 2}}), keep=10, ttl_s=30)
    await b.store.push(Batch(counts={bucket: {"requests": 7}}), keep=10, ttl_s=30)
    seen_by_b = await b.store.pull([], 0.0, [bucket, bucket - 1], ttl_s=5)
    assert seen_by_b.counts == {bucket: {"requests": 5, "retries": 1}}
    seen_by_a = await a.store.pull([], 0.0, [bucket], ttl_s=5)
    assert seen_by_a.counts == {bucket: {"requests": 7}}


@pytest.mark.asyncio
async def test_inflight_of_other_replicas_and_its_expiry(pair):
    a, b = pair
    await a.store.push(Batch(inflight={"x/m": 2, "y/m": 1}), keep=10, ttl_s=30)
    assert (await b.store.pull([], 0.0, [], ttl_s=5)).inflight == {"x/m": 2, "y/m": 1}
    assert (await a.store.pull([], 0.0, [], ttl_s=5)).inflight == {}
    await a.store.push(Batch(inflight={"x/m": 0, "y/m": 1}), keep=10, ttl_s=30)
    assert (await b.store.pull([], 0.0, [], ttl_s=5)).inflight == {"y/m": 1}
    await asyncio.sleep(0.3)  # a replica that stops pushing (it died) stops counting
    assert (await b.store.pull([], 0.0, [], ttl_s=0.2)).inflight == {}


@pytest.mark.asyncio
async def test_ejection_is_read_and_heard_by_the_other_replica(pair):
    a, b = pair
    ejection = Ejection(time.time() + 5, 2)
    await a.store.eject("x/m", ejection, ttl_s=30)
    found = await b.store.ejections(["x/m", "y/m"])
    assert set(found) == {"x/m"}
    assert found["x/m"].count == 2 and found["x/m"].until == pytest.approx(ejection.until, abs=1e-3)
    assert await b.hears(("x/m", found["x/m"])), "every replica is notified"
    assert await a.hears(("x/m", found["x/m"])), "the ejecting one too"
    await b.store.restore("x/m")
    assert await a.store.ejections(["x/m"]) == {}
    assert await a.hears(("x/m", None))
    assert await b.store.ejections([]) == {}


@pytest.mark.asyncio
async def test_ejection_record_expires(pair):
    a, b = pair
    await a.store.eject("x/m", Ejection(time.time() + 0.05, 1), ttl_s=0.2)
    assert "x/m" in await b.store.ejections(["x/m"])
    await asyncio.sleep(0.35)
    assert await b.store.ejections(["x/m"]) == {}


@pytest.mark.asyncio
async def test_one_probe_at_a_time(pair):
    a, b = pair
    assert await a.store.claim_probe("x/m", 5.0) is True
    assert await b.store.claim_probe("x/m", 5.0) is False
    assert await a.store.claim_probe("x/m", 5.0) is False, "not even the holder twice"
    assert await b.store.claim_probe("y/m", 5.0) is True, "another key is free"
    await b.store.release_probe("x/m")  # not the holder: no effect
    assert await b.store.claim_probe("x/m", 5.0) is False
    await a.store.release_probe("x/m")
    assert await b.store.claim_probe("x/m", 5.0) is True


@pytest.mark.asyncio
async def test_probe_claim_lapses(pair):
    a, b = pair
    assert await a.store.claim_probe("x/m", 0.15) is True
    await asyncio.sleep(0.3)  # a holder that died frees the probe
    assert await b.store.claim_probe("x/m", 5.0) is True


@pytest.mark.asyncio
async def test_concurrent_claims_have_one_winner(pair):
    a, b = pair
    wins = await asyncio.gather(*(r.store.claim_probe("x/m", 5.0) for r in (a, b) * 10))
    assert sum(wins) == 1
