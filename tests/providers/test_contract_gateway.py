"""The provider contract through the whole gateway: what a client (and the ledger, and /metrics)
sees when a backend misbehaves, with a scripted upstream (cheapest, so tried first) beside a
well-behaved simulated one. Unit-level cases of the same faults are in test_contract.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import backend_entry
from tests.openai_schema import validate
from tests.providers.upstreams import (
    ANSWER,
    KINDS,
    LITELLM_CANNOT_SEND_ODD_SHAPES,
    MODEL,
    PARSERS,
    SSE_HEAD,
    Kind,
    Scripted,
    chunk_event,
    json_answer,
    kinds,
    warm_up,
)

MSG = [{"role": "user", "content": "hello"}]
# How each kind reads these bytes is tested in test_contract.py; past the provider the gateway's
# path is the same for every kind, so through the gateway they run for the kind that relays them.
READ_IN_CONTRACT = "its reading of these bytes is tested in test_contract.py; the gateway's part is kind-blind"
# litellm's first call imports a module whose pydantic TypedDicts warn about ``ReadOnly``; that only.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* (is|are) using the `ReadOnly` qualifier:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def warm_kinds(loop_thread) -> None:
    """Every kind's first call made before the cases set their deadlines (the gateways run in
    this process, so what a first call imports is imported for them too)."""
    loop_thread.run(warm_up(), timeout=60)


def _gateway(kind: Kind, scripted: Scripted, start_sim_backend, start_gateway, **timeouts: float):
    """The scripted upstream behind a provider of ``kind``, and a good simulated backend."""
    good = start_sim_backend("good")
    gw = start_gateway(
        [kind.config(scripted.base_url, **timeouts), backend_entry(good, price={"input": 9, "output": 9})],
        routing={"exploration": 0.0, "eject_after_failures": 100},
    )
    gw.sims = {"good": good}
    return gw


def _stream(gw, **extra: Any) -> tuple[httpx.Response, list[dict[str, Any]], float]:
    started = time.monotonic()
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": MSG, "max_tokens": 4, "stream": True, **extra},
    )
    frames = [f.removeprefix("data: ") for f in resp.text.split("\n\n") if f]
    assert frames and (frames[-1] == "[DONE]" or "error" in frames[-1]), resp.text
    events = [orjson.loads(f) for f in frames if f != "[DONE]"]
    return resp, events, time.monotonic() - started


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


# -- line endings ----------------------------------------------------------------------------------


@kinds(omit=dict.fromkeys(PARSERS, READ_IN_CONTRACT))
@pytest.mark.parametrize("ending", [b"\r", b"\r\n"], ids=["cr", "crlf"])
def test_every_sse_line_ending_is_understood(
    provider_kind, scripted, start_sim_backend, start_gateway, ending: bytes
) -> None:
    scripted.steps = [SSE_HEAD] + [
        e.replace(b"\n", ending)
        for e in (chunk_event("Hello"), chunk_event(" there"), chunk_event(finish="stop"), b"data: [DONE]\n\n")
    ]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp, events, _ = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "scripted"
    assert _text(events) == "Hello there"


@kinds(omit=dict.fromkeys(PARSERS, READ_IN_CONTRACT))
def test_a_crlf_split_across_reads_ends_the_event_at_once(
    provider_kind, scripted, start_sim_backend, start_gateway
) -> None:
    """The event is complete at its CR; the LF after it comes 1.5 s later, past first_token."""
    first = chunk_event("Hello").replace(b"\n", b"\r\n")
    scripted.steps = [SSE_HEAD, first[:-1], 1.5, b"\n", chunk_event(" you", finish="stop"), b"data: [DONE]\n\n"]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway, first_token=1.0)
    resp, events, _ = _stream(gw)
    assert (resp.headers["x-fedrouter-backend"], _text(events)) == ("scripted", "Hello you")


# -- deadlines count events, not bytes ---------------------------------------------------------


@kinds(omit=dict.fromkeys(PARSERS, READ_IN_CONTRACT))
def test_comments_do_not_put_off_the_first_token_deadline(
    provider_kind, scripted, start_sim_backend, start_gateway
) -> None:
    scripted.steps = [SSE_HEAD] + [b": keep-alive\n\n", 0.1] * 60
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway, first_token=0.5)
    resp, events, took = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "good" and _text(events)
    assert took < 3.0, f"fell back only after {took:.1f} s; the comments kept it waiting"


def test_comments_do_not_put_off_the_idle_deadline(provider_kind, scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [SSE_HEAD, chunk_event("Hello")] + [b": keep-alive\n\n", 0.1] * 60
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway, idle=0.5)
    resp, events, took = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "scripted"
    assert "timeouts.idle" in events[-1]["error"]["message"] and took < 3.0
    validate(events[-1], "ErrorResponse")
    assert _text(events[:-1]) == "Hello"


def test_total_bounds_a_stream_that_keeps_going(provider_kind, scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [SSE_HEAD] + [chunk_event("x"), 0.1] * 100
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway, total=1.0)
    resp, events, took = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "scripted"
    assert "timeouts.total" in events[-1]["error"]["message"] and took < 3.0
    [row] = gw.usage("acme")["recent"]
    assert (row["backend"], row["outcome"]) == ("scripted", "upstream_error")


def test_total_bounds_a_body_that_trickles_in(provider_kind, scripted, start_sim_backend, start_gateway) -> None:
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
    head = json_answer(body)[: -len(body)]
    scripted.steps = [head] + [step for byte in body for step in (bytes([byte]), 0.1)]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway, total=1.0)
    started = time.monotonic()
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=4)
    assert resp.headers["x-fedrouter-backend"] == "good" and time.monotonic() - started < 3.0


# -- answers that are not answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "object": "chat.completion", "model": "m1"},
        {"id": "x", "object": "chat.completion", "choices": None},
    ],
)
def test_a_200_without_choices_falls_back(provider_kind, scripted, start_sim_backend, start_gateway, body) -> None:
    scripted.steps = [json_answer(body)]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=4)
    assert (resp.headers["x-fedrouter-backend"], resp.headers["x-fedrouter-attempts"]) == ("good", "2")
    assert resp.parse().choices[0].message.content


# -- the backend's own 4xx ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"401 Unauthorized", b"403 Forbidden", b"404 Not Found"])
def test_a_backends_own_4xx_falls_back(
    provider_kind, scripted, start_sim_backend, start_gateway, status: bytes
) -> None:
    """Its credentials or its models: nothing the client did, so another backend answers; alone,
    the client gets 503 naming the backend's answer, never a 401 that blames its own key."""
    scripted.steps = [
        json_answer({"error": {"message": "upstream says no", "type": "x", "param": None, "code": None}}, status=status)
    ]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=4)
    assert (resp.headers["x-fedrouter-backend"], resp.headers["x-fedrouter-attempts"]) == ("good", "2")
    alone = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": MSG, "max_tokens": 4, "provider": {"only": ["scripted"]}},
    )
    assert alone.status_code == 503, alone.text
    validate(alone.json(), "ErrorResponse")
    assert f"HTTP {status[:3].decode()}" in alone.json()["error"]["message"]


def test_a_request_a_backend_refuses_is_relayed_not_retried(
    provider_kind, scripted, start_sim_backend, start_gateway
) -> None:
    scripted.steps = [
        json_answer(
            {
                "error": {
                    "message": "max_tokens is too large",
                    "type": "invalid_request_error",
                    "param": "max_tokens",
                    "code": None,
                }
            },
            status=b"400 Bad Request",
        )
    ]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": MSG, "max_tokens": 4},
    )
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "max_tokens is too large"
    assert resp.headers["x-should-retry"] == "false" and scripted.requests == 1


# -- usage a backend reports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1000000, "completion_tokens": -5},
        {"prompt_tokens": True, "completion_tokens": "3"},
        {"prompt_tokens": 10**15, "completion_tokens": 2},
    ],
)
def test_unbelievable_usage_is_counted_instead(
    provider_kind, scripted, start_sim_backend, start_gateway, usage
) -> None:
    scripted.steps = [json_answer({**ANSWER, "usage": usage})]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    answer = gw.client().chat.completions.create(model="m1", messages=MSG, max_tokens=4)
    assert answer.choices[0].message.content == "Hello there"
    [row] = gw.usage("acme")["recent"]
    assert row["tokens_source"] == "counted" and row["cost_usd"] >= 0
    assert 0 < row["input_tokens"] < 100 and row["output_tokens"] == 2  # "Hello there"


def test_a_partial_usage_counts_what_is_missing(provider_kind, scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [json_answer({**ANSWER, "usage": {"prompt_tokens": 7, "completion_tokens": "3"}})]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    answer = gw.client().chat.completions.create(model="m1", messages=MSG, max_tokens=4)
    [row] = gw.usage("acme")["recent"]
    assert (row["input_tokens"], row["output_tokens"], row["tokens_source"]) == (7, 2, "counted")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (7, 2, 9)


@pytest.mark.parametrize("endpoint", ["chat/completions", "embeddings"])
def test_an_answer_without_usage_gets_the_counts_it_was_billed_at(
    provider_kind, scripted, start_sim_backend, start_gateway, endpoint: str
) -> None:
    """OpenAI's answers always carry usage, and clients read it: the gateway's counts fill in."""
    if endpoint == "embeddings":
        answer = {
            "object": "list",
            "model": "m1",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        }
        request = {"model": "m1", "input": "hello there", "encoding_format": "float"}
    else:
        answer, request = ANSWER, {"model": "m1", "messages": MSG, "max_tokens": 4}
    scripted.steps = [json_answer(answer)]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp = httpx.post(f"{gw.url}/v1/{endpoint}", headers=gw.auth(), json=request, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    validate(body, "CreateEmbeddingResponse" if endpoint == "embeddings" else "CreateChatCompletionResponse")
    [row] = gw.usage("acme")["recent"]
    assert body["usage"]["prompt_tokens"] == row["input_tokens"] > 0
    assert body["usage"]["total_tokens"] == row["input_tokens"] + row["output_tokens"]
    assert {k: v for k, v in body.items() if k != "usage"} == answer  # the rest as the backend sent it


@pytest.mark.parametrize(
    "usage", [{"prompt_tokens": -1000000, "completion_tokens": -5}, {"prompt_tokens": 7, "completion_tokens": 3}]
)
@pytest.mark.parametrize("asked", [False, True])
def test_stream_usage_on_a_content_chunk(
    provider_kind, scripted, start_sim_backend, start_gateway, usage, asked: bool
) -> None:
    """Usage on the last content chunk, as some servers send it: billed from if believable, never
    on the client's chunk, and the client gets one usage chunk if it asked, none otherwise."""
    scripted.steps = [
        SSE_HEAD,
        chunk_event("Hello"),
        chunk_event(" there", finish="stop", usage=usage),
        b"data: [DONE]\n\n",
    ]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    extra = {"stream_options": {"include_usage": True}} if asked else {}
    resp, events, _ = _stream(gw, **extra)
    assert resp.text.endswith("data: [DONE]\n\n") and _text(events) == "Hello there"
    assert all("usage" not in e for e in events if e["choices"])
    [row] = gw.usage("acme")["recent"]
    believable = usage["prompt_tokens"] >= 0
    assert (row["output_tokens"], row["tokens_source"]) == ((3, "upstream") if believable else (2, "counted"))
    usage_chunks = [e for e in events if not e["choices"]]
    assert len(usage_chunks) == (1 if asked else 0)
    if asked:
        validate(usage_chunks[0], "CreateChatCompletionStreamResponse")
        assert usage_chunks[0]["usage"]["completion_tokens"] == row["output_tokens"]


def test_a_choice_that_is_not_an_object_falls_back(provider_kind, scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [SSE_HEAD, b'data: {"id":"c","object":"chat.completion.chunk","choices":["x"]}\n\n']
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp, events, _ = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "good" and _text(events)


@pytest.mark.parametrize("steps", [[SSE_HEAD, b"data: [DONE]\n\n"], [SSE_HEAD]], ids=["done-at-once", "closed-at-once"])
def test_a_stream_without_a_single_event_falls_back(
    provider_kind, scripted, start_sim_backend, start_gateway, steps: list
) -> None:
    scripted.steps = steps
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp, events, _ = _stream(gw)
    assert (resp.headers["x-fedrouter-backend"], resp.headers["x-fedrouter-attempts"]) == ("good", "2")
    assert _text(events)


@kinds(pending={"litellm": LITELLM_CANNOT_SEND_ODD_SHAPES})
@pytest.mark.parametrize("stream", [False, True])
def test_odd_message_shapes_are_still_billed(
    provider_kind, scripted, start_sim_backend, start_gateway, stream: bool
) -> None:
    """Counting the prompt at the gateway (the backend gave no usage) reads what it can of any
    message shape the backend accepted, and never fails the request."""
    scripted.steps = (
        [SSE_HEAD, chunk_event("Hi", finish="stop"), b"data: [DONE]\n\n"] if stream else [json_answer(ANSWER)]
    )
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    # A body dispatch changes (a stream's, to ask for usage; any whose model the backend names
    # otherwise) is written again, at most 254 levels deep; one it forwards as is may be deeper.
    changed = stream or provider_kind.config(scripted.base_url)["models"] != [MODEL]
    deep: Any = "deep"
    for _ in range(200 if changed else 600):
        deep = [deep]
    messages = [
        {"role": "assistant", "tool_calls": [{"function": "x"}, "y", {"function": [1]}]},
        {"role": "user", "content": deep},
        {"role": "user", "content": "hello"},
    ]
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": messages, "max_tokens": 4, "stream": stream},
    )
    assert resp.status_code == 200, resp.text
    if stream:
        assert resp.text.endswith("data: [DONE]\n\n")
    [row] = gw.usage("acme")["recent"]
    assert row["tokens_source"] == "counted" and row["input_tokens"] > 0


# Refused before any backend is reached: the provider kind plays no part, so one runs it.
def test_a_body_too_deep_to_forward_changed_is_refused(scripted, start_sim_backend, start_gateway) -> None:
    """orjson reads 1024 levels but writes 254: a stream's body, changed to ask for usage, cannot
    be written again. A 400 that says so, nothing sent and nothing billed."""
    scripted.steps = [SSE_HEAD, chunk_event("Hi", finish="stop"), b"data: [DONE]\n\n"]
    gw = _gateway(KINDS["openai"], scripted, start_sim_backend, start_gateway)
    deep: Any = "deep"
    for _ in range(300):
        deep = [deep]
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": [{"role": "user", "content": deep}], "max_tokens": 4, "stream": True},
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "nested_too_deeply", resp.text
    validate(resp.json(), "ErrorResponse")
    assert scripted.requests == 0 and gw.usage("acme")["recent"] == []


# -- one event per request that reached a backend -------------------------------------------------


def _requests_total(gw, outcome: str, backend: str) -> float:
    text = httpx.get(gw.url + "/metrics", headers=gw.admin(), timeout=10).text
    pattern = rf'^fedrouter_requests_total{{backend="{backend}",model="[^"]*",outcome="{outcome}",[^}}]*}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


def test_a_request_no_backend_answered_has_one_unbilled_event(
    provider_kind, scripted, start_sim_backend, start_gateway
) -> None:
    scripted.steps = [json_answer(b'{"error":"busy"}', status=b"503 Service Unavailable")]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": MSG, "max_tokens": 4, "provider": {"only": ["scripted"]}},
    )
    assert resp.status_code == 503
    events = gw.usage("acme")["recent"]
    assert [(e["backend"], e["kind"], e["billed"], e["outcome"], e["request_id"]) for e in events] == [
        ("scripted", "request", False, "upstream_error", resp.headers["x-request-id"])
    ]
    assert _requests_total(gw, "upstream_error", "scripted") == 1


def test_a_relayed_refusal_has_one_unbilled_event(provider_kind, scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [
        json_answer(
            {"error": {"message": "bad max_tokens", "type": "invalid_request_error", "param": None, "code": None}},
            status=b"400 Bad Request",
        )
    ]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=30,
        json={"model": "m1", "messages": MSG, "max_tokens": 4},
    )
    assert resp.status_code == 400
    [event] = gw.usage("acme")["recent"]
    assert (event["backend"], event["billed"], event["outcome"], event["input_tokens"]) == (
        "scripted",
        False,
        "client_error",
        0,
    )
    assert _requests_total(gw, "client_error", "scripted") == 1


# Refused before any backend is reached: the provider kind plays no part, so one runs it.
def test_requests_refused_before_any_backend_are_counted_not_recorded(
    scripted, start_sim_backend, start_gateway
) -> None:
    gw = _gateway(KINDS["openai"], scripted, start_sim_backend, start_gateway)
    assert (
        httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"authorization": "Bearer nope"},
            json={"model": "m1", "messages": MSG},
        ).status_code
        == 401
    )
    assert (
        httpx.post(
            gw.url + "/v1/chat/completions", headers=gw.auth(), json={"model": "no-such-model-7", "messages": MSG}
        ).status_code
        == 404
    )
    assert gw.usage("acme")["recent"] == [] and scripted.requests == 0
    assert _requests_total(gw, "client_error", "") == 2
    assert "no-such-model-7" not in httpx.get(gw.url + "/metrics", headers=gw.admin()).text  # no client labels


def test_a_timed_out_attempt_is_kept_as_unbilled_consumption(
    provider_kind, scripted, start_sim_backend, start_gateway
) -> None:
    scripted.steps = [SSE_HEAD, 3.0]  # the head, then nothing: first_token runs out
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway, first_token=0.5)
    resp, events, _ = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "good" and _text(events)
    rows = sorted(
        (e["backend"], e["attempt"], e["kind"], e["billed"], e["input_tokens"] > 0) for e in gw.usage("acme")["recent"]
    )
    assert rows == [("good", 2, "request", True, True), ("scripted", 1, "retry", False, True)]


def test_a_client_leaving_before_the_first_byte_cancels_and_nothing_more_is_tried(
    provider_kind, scripted, start_sim_backend, start_gateway, loop_thread
) -> None:
    scripted.steps = [SSE_HEAD, 10.0]  # silent until first_token (5 s) would run out
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    body = orjson.dumps({"model": "m1", "messages": MSG, "max_tokens": 4, "stream": True})

    async def leave_early() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (gw.keys["acme"].encode(), len(body), body)
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    started = time.monotonic()
    loop_thread.run(leave_early())
    deadline = time.monotonic() + 5
    while not (events := gw.usage("acme")["recent"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.monotonic() - started < 3.0, "the request went on after the client left"
    assert [(e["backend"], e["billed"], e["outcome"]) for e in events] == [("scripted", False, "client_disconnected")]
    assert scripted.requests == 1
    time.sleep(0.3)
    assert len(gw.usage("acme")["recent"]) == 1 and gw.sims["good"].stats()["requests"] == 0  # no fallback


def test_a_client_leaving_mid_stream_closes_the_upstream_connection(
    provider_kind, scripted, start_sim_backend, start_gateway, loop_thread
) -> None:
    """The client reads the first event and hangs up: the backend's connection is closed at
    once (not left to stream on into a socket nobody reads), and nothing more is tried."""
    scripted.steps = [SSE_HEAD, chunk_event("Hello"), 10.0]
    gw = _gateway(provider_kind, scripted, start_sim_backend, start_gateway)
    body = orjson.dumps({"model": "m1", "messages": MSG, "max_tokens": 4, "stream": True})

    async def leave_after_the_first_event() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (gw.keys["acme"].encode(), len(body), body)
        )
        await writer.drain()
        seen = b""
        async with asyncio.timeout(5):
            while b"Hello" not in seen:
                seen += await reader.read(4096)
        writer.close()
        return seen

    assert b"Hello" in loop_thread.run(leave_after_the_first_event())
    deadline = time.monotonic() + 3
    while scripted.peer_closed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scripted.peer_closed == 1, "the backend's connection outlived the client's"
    assert scripted.requests == 1 and gw.sims["good"].stats()["requests"] == 0
