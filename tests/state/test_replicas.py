"""Gateway replicas sharing state: two `fedrouter serve` processes on one real Redis agree on
ejections, and in-process replicas share measurements and retry-budget counters."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from policies.base import Stats
from router.config import RoutingConfig
from router.fleet.backend_stats import EjectionPolicy, StatsBook
from router.state import MemorySpace, MemoryStore
from router.state.redis import RedisStore
from tests.processes import free_port, run, spawn, wait_ready

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = "replica-admin-key-0123456789"


async def _drop(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def prefix(monkeypatch):
    value = f"fedrouter-test-{uuid.uuid4().hex}:"
    monkeypatch.setenv("FEDROUTER_STATE_PREFIX", value)
    monkeypatch.setenv("FEDROUTER_ADMIN_KEY", ADMIN)
    yield value
    asyncio.run(_drop(value))


def test_a_backend_ejected_by_one_gateway_is_avoided_by_the_other(start_sim_backend, tmp_path, prefix):
    a = start_sim_backend("a")
    b = start_sim_backend("b")
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(f"""
backends:
  - {{name: a, class: datacenter, type: openai, base_url: "{a.base_url}", models: [m1],
      price: {{input: 0.1, output: 0.1}}, energy: {{joules_per_token: 0.1}}}}
  - {{name: b, class: datacenter, type: openai, base_url: "{b.base_url}", models: [m1],
      price: {{input: 5, output: 5}}, energy: {{joules_per_token: 2}}}}
tenants: [{{name: acme}}]
routing: {{exploration: 0.0, retries_per_backend: 0, eject_after_failures: 2, eject_seconds: 30}}
""")
    ledgers = [f"sqlite:///{tmp_path / f'gw{i}.db'}" for i in (1, 2)]
    keys = [
        run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", url).stdout.split()[-1]
        for url in ledgers
    ]
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with (
        spawn(
            "serve", "--config", str(cfg), "--port", str(ports[0]), "--ledger", ledgers[0], "--state", REDIS_URL
        ) as one,
        spawn(
            "serve", "--config", str(cfg), "--port", str(ports[1]), "--ledger", ledgers[1], "--state", REDIS_URL
        ) as two,
    ):
        wait_ready(urls[0] + "/healthz", one)
        wait_ready(urls[1] + "/healthz", two)

        def ask(i: int) -> httpx.Response:
            return httpx.post(
                urls[i] + "/v1/chat/completions",
                headers={"authorization": f"Bearer {keys[i]}"},
                json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
                timeout=10,
            )

        assert ask(1).headers["x-fedrouter-backend"] == "a", "gateway 2 prefers a while it is healthy"
        a.set(fail_status=500)
        for _ in range(2):  # two failures through gateway 1 eject a
            r = ask(0)
            assert r.status_code == 200 and r.headers["x-fedrouter-backend"] == "b"
        tried = a.stats()["requests"]
        assert tried == 3
        ejected = httpx.get(urls[0] + "/admin/v1/backends", headers={"authorization": f"Bearer {ADMIN}"}).json()
        assert next(x for x in ejected["data"] if x["name"] == "a")["stats"]["ejected"] is True

        r = ask(1)  # gateway 2's very next request
        assert r.status_code == 200 and r.headers["x-fedrouter-backend"] == "b"
        assert r.headers["x-fedrouter-attempts"] == "1", "it did not try a at all"
        assert a.stats()["requests"] == tried


async def _pair(kind: str, prefix: str) -> tuple[StatsBook, StatsBook]:
    groups = {"m1": ["a", "b"]}
    policy = EjectionPolicy.of(RoutingConfig(eject_after_failures=2, eject_seconds=0.4))
    if kind == "memory":
        space = MemorySpace()
        stores = [MemoryStore("r1", space), MemoryStore("r2", space)]
    else:
        stores = [RedisStore(REDIS_URL, prefix, "r1"), RedisStore(REDIS_URL, prefix, "r2")]
    books = [StatsBook(s, policy, groups, sync_s=0.05, freshness_s=0.0) for s in stores]
    for book in books:
        await book.start()
    return books[0], books[1]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_replicas_share_measurements_counters_and_ejections(kind):
    prefix = f"fedrouter-test-{uuid.uuid4().hex}:"
    one, two = await _pair(kind, prefix)
    try:
        for _ in range(5):
            one.success("a", "m1", 0.2, 40, 1.0)
            one.count("requests")
        one.started("a", "m1")
        await asyncio.sleep(0.3)  # a few sync rounds
        seen = two.view("a", "m1")
        assert seen.ttft_s == pytest.approx(0.2) and seen.tokens_per_s == pytest.approx(40.0)
        assert seen.inflight == 1, "in flight on the other replica"
        assert two.windowed("requests") == 5 and one.windowed("requests") == 5, "counted once each"
        assert two.view("b", "m1") == Stats()

        await one.failure("b", "m1")
        await one.failure("b", "m1")
        assert one.ejected("b", "m1")
        await two.refresh("m1")
        assert two.view("b", "m1").ejected, "seen by the other replica before its next plan"

        await asyncio.sleep(0.45)  # the ejection lapses: one probe, across both replicas
        assert one.half_open("b", "m1") and two.half_open("b", "m1")
        won = await asyncio.gather(
            one.claim_probe("b", "m1"),
            two.claim_probe("b", "m1"),
            one.claim_probe("b", "m1"),
            two.claim_probe("b", "m1"),
        )
        assert sum(won) == 1
        prober = (one, two)[won.index(True) % 2]
        prober.answered("b", "m1", probe=True)  # it answered: back in rotation everywhere
        await asyncio.sleep(0.3)
        other = two if prober is one else one
        assert not other.half_open("b", "m1") and not other.view("b", "m1").ejected
    finally:
        await one.close()
        await two.close()
        if kind == "redis":
            await _drop(prefix)
