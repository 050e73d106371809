"""Rate limits: the GCRA arithmetic, one contract suite over the in-process and Redis admissions,
and OpenAI's 429 and x-ratelimit-* headers over real sockets."""

from __future__ import annotations

import secrets
import threading
import time

import httpx
import openai
import pytest
import pytest_asyncio

from router.config import RateLimits
from router.errors import RateLimited
from router.ledger import open_ledger
from router.ledger.base import UsageRecord
from router.tenancy.admission.base import Demand
from router.tenancy.admission.memory import LocalAdmission
from router.tenancy.admission.redis import RedisAdmission
from router.tenancy.budgets import ZERO
from router.tenancy.limits import duration, gcra
from tests.conftest import backend_entry
from tests.openai_schema import validate

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.012, "12ms"),
        (0.9994, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (20.0, "20s"),
        (360.0, "6m0s"),
        (252.172, "4m12.172s"),
        (3600.0, "1h0m0s"),
        (83909.144, "23h18m29.144s"),
    ],
)
def test_durations_are_written_as_openai_does(seconds, text):
    assert duration(seconds) == text


def test_gcra_allows_a_burst_of_the_limit_then_one_per_interval():
    tat, now = 0.0, 1000.0
    seen = []
    for _ in range(3):
        tat, verdict = gcra(tat, now, 1, 3)
        assert tat is not None
        seen.append((verdict.remaining, round(verdict.reset_s, 6)))
    assert seen == [(2, 20.0), (1, 40.0), (0, 60.0)]
    refused, verdict = gcra(tat, now, 1, 3)
    assert refused is None and verdict.remaining == 0 and verdict.retry_after_s == pytest.approx(20.0)
    again, verdict = gcra(tat, now + 20.0, 1, 3)
    assert again is not None and verdict.remaining == 0
    # Tokens: a draw of 600 of 1000 leaves 400; 500 more must wait for 100 to refill (6 s).
    tat, verdict = gcra(0.0, now, 600, 1000)
    assert verdict.remaining == 400
    _, verdict = gcra(tat, now, 500, 1000)
    assert verdict.retry_after_s == pytest.approx(6.0)


# -- one contract, two implementations -------------------------------------------------------------


@pytest_asyncio.fixture(params=["memory", "redis"])
async def admission(request, tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    await ledger.start()
    prefix = f"fedrouter-test:{secrets.token_hex(6)}:"
    impl = LocalAdmission(ledger) if request.param == "memory" else RedisAdmission(REDIS, prefix, ledger, 600.0)
    yield impl
    await impl.close()
    await ledger.close()
    if request.param == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS)
        async for key in client.scan_iter(match=prefix + "*"):
            await client.delete(key)
        await client.aclose()


def _demand(
    limits: RateLimits,
    key_limits: RateLimits | None = None,
    *,
    tokens: int = 10,
    stream: bool = False,
    key_id: str = "key_a",
) -> Demand:
    return Demand(
        "req_" + secrets.token_hex(6), "acme", key_id, limits, key_limits, (), tokens, ZERO, stream, time.time()
    )


def _record(tokens_in: int, tokens_out: int) -> UsageRecord:
    return UsageRecord(
        "req_x",
        time.time(),
        "acme",
        "dc1",
        "datacenter",
        None,
        "m1",
        "chat/completions",
        tokens_in,
        tokens_out,
        0.0,
        0.0,
        1.0,
        None,
        "ok",
        "upstream",
        1,
        False,
    )


@pytest.mark.asyncio
async def test_requests_per_minute(admission):
    limits = RateLimits(requests_per_minute=2)
    first = await admission.admit(_demand(limits))
    second = await admission.admit(_demand(limits))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert [first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]] == [
        "1",
        "0",
    ]
    # The window's oldest request leaves it a minute after it came, less the time admission took
    # (a Redis round trip can take a few ms on a loaded machine).
    reset = second.headers["x-ratelimit-reset-requests"]
    assert reset == "1m0s" or (reset.startswith("59.") and reset.endswith("s") and float(reset[:-1]) > 59.5)
    with pytest.raises(RateLimited) as refused:
        await admission.admit(_demand(limits))
    headers = refused.value.response_headers()
    assert 1 <= int(headers["retry-after"]) <= 30 and 25_000 <= int(headers["retry-after-ms"]) <= 30_000
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-should-retry"] == "true"
    assert refused.value.type == "requests"


@pytest.mark.asyncio
async def test_tokens_are_drawn_at_admission_and_corrected_at_settlement(admission):
    limits = RateLimits(tokens_per_minute=1000)
    first = await admission.admit(_demand(limits, tokens=600))
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited) as refused:
        await admission.admit(_demand(limits, tokens=600))
    assert refused.value.type == "tokens"
    await admission.settle(first, _record(60, 40))  # it used 100, not 600: 500 come back
    again = await admission.admit(_demand(limits, tokens=600))
    assert 299 <= int(again.headers["x-ratelimit-remaining-tokens"]) <= 301
    with pytest.raises(RateLimited) as too_big:
        await admission.admit(_demand(limits, tokens=1001))
    assert too_big.value.should_retry is False and "Request too large" in too_big.value.message


@pytest.mark.asyncio
async def test_concurrent_streams_are_held_until_settled(admission):
    limits = RateLimits(concurrent_streams=1)
    stream = await admission.admit(_demand(limits, stream=True))
    with pytest.raises(RateLimited) as refused:
        await admission.admit(_demand(limits, stream=True))
    assert refused.value.code == "concurrency_limit_exceeded"
    await admission.admit(_demand(limits))  # a request that does not stream holds no slot
    await admission.settle(stream, None)
    await admission.settle(stream, None)  # twice is once
    second = await admission.admit(_demand(limits, stream=True))
    with pytest.raises(RateLimited):
        await admission.admit(_demand(limits, stream=True))
    await admission.settle(second, None)


@pytest.mark.asyncio
async def test_a_refused_request_takes_nothing_and_the_tighter_limit_is_reported(admission):
    tenant, key = RateLimits(requests_per_minute=10), RateLimits(requests_per_minute=1)
    first = await admission.admit(_demand(tenant, key))
    assert first.headers["x-ratelimit-limit-requests"] == "1"  # the key's bucket is the tighter
    with pytest.raises(RateLimited) as refused:
        await admission.admit(_demand(tenant, key))
    assert "for this key" in refused.value.message
    other = await admission.admit(_demand(tenant, key_id="key_b"))
    assert other.headers["x-ratelimit-remaining-requests"] == "8"  # the refused request drew nothing


# -- over HTTP --------------------------------------------------------------------------------------


def test_429_carries_openai_rate_limit_headers(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1")
    gw = start_gateway(
        [backend_entry(sim)], [{"name": "acme", "limits": {"requests_per_minute": 3, "tokens_per_minute": 100_000}}]
    )
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    remaining = []
    for _ in range(3):
        resp = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json=body)
        assert resp.status_code == 200
        assert resp.headers["x-ratelimit-limit-requests"] == "3"
        assert resp.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) < 100_000
        assert resp.headers["x-ratelimit-reset-tokens"].endswith(("ms", "s"))
        remaining.append(resp.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    resp = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json=body)
    assert resp.status_code == 429
    validate(resp.json(), "ErrorResponse")
    assert resp.json()["error"]["code"] == "rate_limit_exceeded" and resp.json()["error"]["type"] == "requests"
    assert int(resp.headers["retry-after"]) >= 1 and int(resp.headers["retry-after-ms"]) > 1000
    assert resp.headers["x-ratelimit-remaining-requests"] == "0" and resp.headers["x-should-retry"] == "true"
    assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError):
        gw.client().chat.completions.create(**body)
    assert sim.stats()["requests"] == 3  # refused requests never reach a backend


def test_concurrent_stream_limit_over_http(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1", tokens_per_s=20.0)
    gw = start_gateway([backend_entry(sim)], [{"name": "acme", "limits": {"concurrent_streams": 1}}])
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
    with httpx.Client(timeout=10) as client:
        first_done = threading.Event()

        def hold() -> None:
            with client.stream("POST", gw.url + "/v1/chat/completions", headers=gw.auth(), json=body) as resp:
                assert resp.status_code == 200
                for _ in resp.iter_bytes():
                    pass
            first_done.set()

        holder = threading.Thread(target=hold)
        holder.start()
        deadline = time.monotonic() + 5
        while sim.stats()["requests"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the first stream has its slot once the backend answers
        second = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json=body)
        assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
        plain = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json={**body, "stream": False})
        assert plain.status_code == 200
        holder.join(10)
        assert first_done.is_set()
        third = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json=body)
        assert third.status_code == 200 and third.text.endswith("data: [DONE]\n\n")


def test_a_key_limit_narrows_only_that_key(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1")
    gw = start_gateway([backend_entry(sim)], [{"name": "acme", "limits": {"requests_per_minute": 50}}])
    created = httpx.post(
        gw.url + "/admin/v1/keys", headers=gw.admin(), json={"tenant": "acme", "limits": {"requests_per_minute": 1}}
    )
    narrow = {"authorization": f"Bearer {created.json()['key']}"}
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert httpx.post(gw.url + "/v1/chat/completions", headers=narrow, json=body).status_code == 200
    refused = httpx.post(gw.url + "/v1/chat/completions", headers=narrow, json=body)
    assert refused.status_code == 429 and "for this key" in refused.json()["error"]["message"]
    assert httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json=body).status_code == 200
