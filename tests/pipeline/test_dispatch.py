"""Fallback, retries, circuit breaking and stream failures, against misbehaving upstreams."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import orjson
import pytest

from router.pipeline.tokens import TokenCounter
from tests.conftest import backend_entry
from tests.openai_schema import validate

MSG = [{"role": "user", "content": "hello"}]


def _two(start_sim_backend, start_gateway, **routing):
    # "a" is cheaper and greener, so a balanced policy tries it first.
    a = start_sim_backend("a")
    b = start_sim_backend("b")
    gw = start_gateway(
        [
            backend_entry(a, price={"input": 0.1, "output": 0.1}, energy={"joules_per_token": 0.1}),
            backend_entry(b, price={"input": 5.0, "output": 5.0}, energy={"joules_per_token": 2.0}),
        ],
        routing={"exploration": 0.0, **routing},
    )
    gw.sims = {"a": a, "b": b}
    return gw, a, b


def test_prefers_cheaper_greener_backend(start_sim_backend, start_gateway):
    gw, _a, b = _two(start_sim_backend, start_gateway)
    for _ in range(3):
        resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=2)
        assert resp.headers["x-fedrouter-backend"] == "a"
    assert b.stats()["requests"] == 0


@pytest.mark.parametrize("status", [429, 500, 503])
def test_falls_back_invisibly_on_retryable_status(start_sim_backend, start_gateway, status):
    gw, a, _b = _two(start_sim_backend, start_gateway)
    a.set(fail_status=status, fail_count=1)
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=2)
    assert resp.status_code == 200
    assert resp.headers["x-fedrouter-backend"] == "b"
    assert resp.headers["x-fedrouter-attempts"] == "2"
    rows = gw.usage("acme")["recent"]
    assert len(rows) == 1 and rows[0]["backend"] == "b" and rows[0]["attempts"] == 2


def test_client_error_from_upstream_is_relayed_not_retried(start_sim_backend, start_gateway):
    gw, a, b = _two(start_sim_backend, start_gateway)
    a.set(fail_status=400, fail_count=1)
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="m1", messages=MSG)
    assert exc.value.response.headers["x-should-retry"] == "false"
    validate(exc.value.response.json(), "ErrorResponse")
    assert b.stats()["requests"] == 0, "a request the backend rejected as invalid must not be retried elsewhere"
    assert gw.usage("acme")["totals"]["requests"] == 0


def test_connection_refused_falls_back(start_sim_backend, start_gateway):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    good = start_sim_backend("good")
    gw = start_gateway(
        [
            {
                "name": "dead",
                "class": "datacenter",
                "type": "openai",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "models": ["m1"],
                "price": {"input": 0, "output": 0},
            },
            backend_entry(good, price={"input": 9, "output": 9}),
        ],
        routing={"exploration": 0.0},
    )
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=2)
    assert resp.headers["x-fedrouter-backend"] == "good"


def test_all_backends_down_gives_503_with_retry_hint(start_sim_backend, start_gateway):
    gw, a, b = _two(start_sim_backend, start_gateway, retries_per_backend=0)
    a.set(fail_status=503)
    b.set(fail_status=502)
    resp = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json={"model": "m1", "messages": MSG})
    assert resp.status_code == 503
    body = resp.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == "no_backend_available"
    assert "a: upstream answered HTTP 503" in body["error"]["message"]
    assert resp.headers["x-should-retry"] == "true"
    assert gw.usage("acme")["totals"]["requests"] == 0


def test_retries_same_backend_with_backoff_when_alone(start_sim_backend, start_gateway):
    only = start_sim_backend("only")
    gw = start_gateway(
        [backend_entry(only)], routing={"retries_per_backend": 2, "max_attempts": 3, "backoff_initial": 0.05}
    )
    only.set(fail_status=503, fail_count=2)
    started = time.perf_counter()
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=2)
    assert resp.headers["x-fedrouter-attempts"] == "3"
    assert time.perf_counter() - started >= 0.05  # it waited between tries of the same backend
    assert only.stats()["requests"] == 3


def test_circuit_breaker_ejects_and_probes(start_sim_backend, start_gateway):
    gw, a, _b = _two(start_sim_backend, start_gateway, eject_after_failures=2, eject_seconds=0.5, retries_per_backend=0)
    a.set(fail_status=500)
    for _ in range(2):
        gw.client().chat.completions.create(model="m1", messages=MSG, max_tokens=1)
    tried = a.stats()["requests"]
    assert tried == 2
    backends = httpx.get(gw.url + "/admin/v1/backends", headers=gw.admin()).json()["data"]
    assert next(x for x in backends if x["name"] == "a")["stats"]["ejected"] is True
    for _ in range(3):  # while ejected, "a" gets no traffic at all
        resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=1)
        assert resp.headers["x-fedrouter-backend"] == "b"
    assert a.stats()["requests"] == tried
    a.set(fail_status=0)
    time.sleep(0.6)
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=1)
    assert resp.headers["x-fedrouter-backend"] == "a", "after the ejection a real request probes it"


def test_stall_before_first_token_falls_back(start_sim_backend, start_gateway):
    slow = start_sim_backend("slow", stall_s=5.0)
    fast = start_sim_backend("fast")
    gw = start_gateway(
        [
            backend_entry(slow, price={"input": 0, "output": 0}, timeouts={"first_token": 0.3}),
            backend_entry(fast, price={"input": 9, "output": 9}),
        ],
        routing={"exploration": 0.0},
    )
    started = time.perf_counter()
    stream = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=2, stream=True)
    assert stream.headers["x-fedrouter-backend"] == "fast"
    assert len(list(stream.parse())) > 0
    assert time.perf_counter() - started < 3


@pytest.fixture
def lying_backend(loop_thread):
    """An upstream whose streams open with an event that is not JSON, then go on as if fine."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: this is not JSON\n\n")
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"spliced"}}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        return response

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, runner.addresses[0][1]

    runner, port = loop_thread.run(start())
    yield f"http://127.0.0.1:{port}/v1"
    loop_thread.run(runner.cleanup())


def test_a_first_event_that_is_not_json_falls_back_unseen(lying_backend, start_sim_backend, start_gateway):
    good = start_sim_backend("good")
    gw = start_gateway(
        [
            {
                "name": "liar",
                "class": "datacenter",
                "type": "openai",
                "base_url": lying_backend,
                "models": ["m1"],
                "price": {"input": 0, "output": 0},
            },
            backend_entry(good, price={"input": 9, "output": 9}),
        ],
        routing={"exploration": 0.0},
    )
    stream = gw.client().chat.completions.with_raw_response.create(
        model="m1", messages=MSG, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    assert stream.headers["x-fedrouter-backend"] == "good"
    assert stream.headers["x-fedrouter-attempts"] == "2"
    chunks = list(stream.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and "spliced" not in text, "nothing of the lying backend reaches the client"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    rows = gw.usage("acme")["recent"]
    # The liar's attempt read the prompt and answered garbage: kept as unbilled consumption.
    assert sorted((r["backend"], r["attempt"], r["kind"], r["billed"], r["outcome"]) for r in rows) == [
        ("good", 2, "request", True, "ok"),
        ("liar", 1, "retry", False, "upstream_error"),
    ]
    deadline = time.monotonic() + 5  # the relay lets go of its backend just after the last event
    while time.monotonic() < deadline:
        stats = {
            x["name"]: x["stats"] for x in httpx.get(gw.url + "/admin/v1/backends", headers=gw.admin()).json()["data"]
        }
        if stats["good"]["inflight"] == 0:
            break
        time.sleep(0.02)
    assert (stats["liar"]["failures"], stats["liar"]["inflight"], stats["good"]["inflight"]) == (1, 0, 0)


def test_mid_stream_failure_ends_with_one_error_event(start_sim_backend, start_gateway):
    gw, a, b = _two(start_sim_backend, start_gateway)
    a.set(drop_after_chunks=2)
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        json={"model": "m1", "messages": MSG, "max_tokens": 8, "stream": True},
    )
    frames = [f.removeprefix("data: ") for f in resp.text.split("\n\n") if f]
    assert resp.headers["x-fedrouter-backend"] == "a"
    assert "[DONE]" not in frames
    events = [orjson.loads(f) for f in frames]
    assert "error" in events[-1] and all("error" not in e for e in events[:-1])
    validate(events[-1], "ErrorResponse")
    texts = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e.get("choices")]
    assert b.stats()["requests"] == 0, "no text may be spliced from a second backend"
    assert len([t for t in texts if t]) == 2
    row = gw.usage("acme")["recent"][0]
    assert row["outcome"] == "upstream_error" and row["tokens_source"] == "counted"
    assert row["output_tokens"] == TokenCounter().count("".join(t for t in texts if t))  # "The quick " is 3


def test_sdk_surfaces_mid_stream_error(start_sim_backend, start_gateway):
    gw, a, _ = _two(start_sim_backend, start_gateway)
    a.set(drop_after_chunks=1)
    with pytest.raises(openai.APIError):
        list(gw.client().chat.completions.create(model="m1", messages=MSG, max_tokens=8, stream=True))


def test_client_disconnect_cancels_upstream_and_bills_tokens_so_far(start_sim_backend, start_gateway):
    slow = start_sim_backend("slowgen", tokens_per_s=20)
    gw = start_gateway([backend_entry(slow)])
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        json={"model": "m1", "messages": MSG, "max_tokens": 200, "stream": True},
    ) as resp:
        request_id = resp.headers["x-request-id"]
        seen = 0
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                seen += 1
                if seen == 3:
                    break
    deadline = time.monotonic() + 5
    while slow.stats()["cancelled_streams"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow.stats()["cancelled_streams"] == 1, "the upstream call must be cancelled"
    deadline = time.monotonic() + 5
    rows: list[dict] = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in gw.usage("acme")["recent"] if r["request_id"] == request_id]
        time.sleep(0.05)
    assert len(rows) == 1
    assert rows[0]["outcome"] == "client_disconnected"
    assert 3 <= rows[0]["output_tokens"] < 200


def test_volunteers_get_no_identifying_fields_and_only_when_allowed(start_sim_backend, start_gateway):
    vol = start_sim_backend("vol")
    gw = start_gateway([backend_entry(vol, cls="volunteer", models={"m1": "upstream-m1"})])
    gw.client("acme").chat.completions.create(
        model="m1",
        messages=MSG,
        user="alice@example.com",
        metadata={"team": "x"},
        extra_body={"safety_identifier": "u1"},
    )
    body = vol.last_request()["body"]
    assert body["model"] == "upstream-m1"
    assert not {"user", "metadata", "safety_identifier"} & set(body)
    with pytest.raises(openai.NotFoundError):  # tenant "other" does not allow volunteers
        gw.client("other").chat.completions.create(model="m1", messages=MSG)
    assert gw.client("other").models.list().data == []


def test_usage_ledger_one_record_per_request(start_sim_backend, start_gateway):
    gw, _a, _b = _two(start_sim_backend, start_gateway)
    ids = set()
    for stream in (False, True, False, True):
        resp = httpx.post(
            gw.url + "/v1/chat/completions",
            headers=gw.auth(),
            json={"model": "m1", "messages": MSG, "max_tokens": 5, "stream": stream},
        )
        assert resp.status_code == 200
        ids.add(resp.headers["x-request-id"])
    data = gw.usage("acme")
    assert {r["request_id"] for r in data["recent"]} == ids
    assert data["totals"]["requests"] == 4 and data["totals"]["output_tokens"] == 20
    row = data["recent"][0]
    # price of "a": 0.1 USD per 1M tokens in and out; 0.1 J per token.
    assert row["cost_usd"] == pytest.approx((row["input_tokens"] + row["output_tokens"]) * 0.1 / 1e6)
    assert row["energy_wh"] == pytest.approx((row["input_tokens"] + row["output_tokens"]) * 0.1 / 3600)
    assert gw.usage("other")["totals"]["requests"] == 0
