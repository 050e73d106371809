"""One contract suite for every provider kind (providers/base.py's Provider), each against scripted
upstreams: plain answers, streams, usage, upstream errors, timeouts, cancellation and hostile bytes.

Every test takes ``provider_kind`` and so runs once per kind in tests/providers/upstreams.py's
``KINDS``; adding a provider means adding its line there. What the gateway shows a client of the
same faults is tested through the whole gateway in test_contract_gateway.py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio

from providers import registry
from providers.base import Provider, ProviderError, UpstreamRequest
from tests.openai_schema import validate
from tests.providers.upstreams import (
    ANSWER,
    DONE,
    KINDS,
    MESSAGES,
    MODEL,
    SSE_HEAD,
    Kind,
    Scripted,
    chunk_event,
    chunked_sse,
    error_answer,
    json_answer,
    unanswered_port,
    until,
    warm_up,
)

# One event loop for the module: litellm pools its HTTP clients per process and loop. litellm's
# first call imports a module whose pydantic TypedDicts warn about ``ReadOnly``; that warning only.
on_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* (is|are) using the `ReadOnly` qualifier:UserWarning")
SLACK = 1.0  # seconds a deadline may be overrun by on a busy machine
Build = Callable[..., Provider]


@pytest_asyncio.fixture(loop_scope="module")
async def build(provider_kind: Kind, scripted: Scripted) -> AsyncIterator[Build]:
    """Providers of the kind under test, pointed at ``scripted`` (or ``base_url``), with timeouts."""
    built: list[Provider] = []

    def make(base_url: str | None = None, **timeouts: float) -> Provider:
        built.append(provider_kind.build(base_url or scripted.base_url, **timeouts))
        return built[-1]

    yield make
    for provider in built:
        await provider.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module", autouse=True)
async def warm_kinds() -> AsyncIterator[None]:
    """Every kind's first call made before the cases set their deadlines; at the end litellm's
    pooled clients, which belong to this module's loop, are closed."""
    await warm_up()
    yield
    if "litellm" in sys.modules:
        await sys.modules["litellm"].close_litellm_async_clients()


def chat(provider: Provider, *, stream: bool = False, **extra: Any) -> UpstreamRequest:
    return KINDS[provider.info.type].request(provider, stream=stream, **extra)


async def run_stream(provider: Provider, request: UpstreamRequest) -> tuple[list[bytes], ProviderError | None]:
    """The events a stream gave and the error that ended it, wherever it came: a kind may fail
    while opening the stream (waiting for its first event) or while reading it."""
    events: list[bytes] = []
    try:
        stream = await provider.stream(request)
    except ProviderError as exc:
        return events, exc
    try:
        async for payload in stream:
            events.append(payload)
    except ProviderError as exc:
        return events, exc
    finally:
        await stream.aclose()
    return events, None


def text_of(events: list[bytes]) -> str:
    chunks = [orjson.loads(e) for e in events]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def test_every_registered_kind_has_its_parameter() -> None:
    assert set(KINDS) == set(registry.KINDS)


# -- plain answers ------------------------------------------------------------------------------------


@on_loop
async def test_a_completion_is_the_upstreams_answer(build: Build, scripted: Scripted, provider_kind: Kind) -> None:
    raw = orjson.dumps({**ANSWER, "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    scripted.steps = [json_answer(raw)]
    provider = build()
    assert isinstance(provider, Provider) and provider.info.type == provider_kind.name
    resp = await provider.complete(chat(provider))
    validate(resp.data, "CreateChatCompletionResponse")
    assert orjson.loads(resp.body) == resp.data
    assert resp.data["choices"][0]["message"]["content"] == "Hello there"
    assert resp.data["choices"][0]["finish_reason"] == "stop"
    if provider_kind.relays:
        assert resp.body == raw
    [sent] = scripted.bodies
    assert orjson.loads(sent)["model"] == MODEL and orjson.loads(sent)["messages"] == MESSAGES


@on_loop
async def test_a_stream_yields_each_events_data_in_order(build: Build, scripted: Scripted) -> None:
    scripted.steps = [SSE_HEAD, chunk_event("Hello"), chunk_event(" there"), chunk_event(finish="stop"), DONE]
    provider = build()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert error is None and text_of(events) == "Hello there"
    for event in events:
        validate(orjson.loads(event), "CreateChatCompletionStreamResponse")
    finishes = [c["finish_reason"] for e in events for c in orjson.loads(e)["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert orjson.loads(scripted.bodies[0])["stream"] is True


@on_loop
async def test_a_stream_without_done_ends_at_the_end_of_its_body(build: Build, scripted: Scripted) -> None:
    scripted.steps = [SSE_HEAD, chunk_event("Hello"), chunk_event(" there", finish="stop")]
    provider = build()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert error is None and text_of(events) == "Hello there"


@on_loop
async def test_embeddings_are_the_upstreams_vectors(build: Build, scripted: Scripted) -> None:
    answer = {
        "object": "list",
        "model": "m1",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    scripted.steps = [json_answer(answer)]
    provider = build()
    payload = {"model": provider.info.models[MODEL], "input": "hello there"}
    resp = await provider.complete(UpstreamRequest("embeddings", payload, orjson.dumps(payload)))
    validate(resp.data, "CreateEmbeddingResponse")
    assert resp.data["data"][0]["embedding"] == [0.5, -0.25] and resp.data["usage"]["prompt_tokens"] == 2


# -- usage: the upstream's counts reach the gateway, which judges them ----------------------------------


@on_loop
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        {"prompt_tokens": -1000000, "completion_tokens": -5},
        {"prompt_tokens": 10**15, "completion_tokens": 2},
    ],
    ids=["reported", "negative", "huge"],
)
async def test_reported_counts_reach_the_caller_as_sent(build: Build, scripted: Scripted, usage: dict) -> None:
    scripted.steps = [json_answer({**ANSWER, "usage": usage})]
    provider = build()
    got = (await provider.complete(chat(provider))).data["usage"]
    assert (got["prompt_tokens"], got["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])


@on_loop
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        {"prompt_tokens": -1000000, "completion_tokens": -5},
    ],
    ids=["reported", "negative"],
)
async def test_a_streams_reported_counts_reach_the_caller_as_sent(
    build: Build, scripted: Scripted, usage: dict
) -> None:
    scripted.steps = [SSE_HEAD, chunk_event("Hello"), chunk_event(" there", finish="stop", usage=usage), DONE]
    provider = build()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert error is None and text_of(events) == "Hello there"
    [got] = [c["usage"] for c in map(orjson.loads, events) if c.get("usage")]
    assert (got["prompt_tokens"], got["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])


@on_loop
@pytest.mark.parametrize(
    "usage",
    [{"prompt_tokens": True, "completion_tokens": "3"}, {"prompt_tokens": 7, "completion_tokens": "3"}],
    ids=["bool-and-string", "partial"],
)
async def test_counts_of_the_wrong_type_reach_the_caller_as_sent(build: Build, scripted: Scripted, usage: dict) -> None:
    scripted.steps = [json_answer({**ANSWER, "usage": usage})]
    provider = build()
    got = (await provider.complete(chat(provider))).data.get("usage") or {}
    assert (got.get("prompt_tokens"), got.get("completion_tokens")) in (
        (usage["prompt_tokens"], usage["completion_tokens"]),
        (None, None),  # or none at all: the gateway counts
    )


@on_loop
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_missing_usage_is_not_invented(build: Build, scripted: Scripted, streaming: bool) -> None:
    """No counts from the upstream, none to the caller: the gateway counts, and says so."""
    provider = build()
    if streaming:
        scripted.steps = [SSE_HEAD, chunk_event("Hello"), chunk_event(" there", finish="stop"), DONE]
        events, error = await run_stream(provider, chat(provider, stream=True))
        assert error is None and text_of(events) == "Hello there"
        assert [c for c in map(orjson.loads, events) if c.get("usage")] == []
    else:
        scripted.steps = [json_answer(ANSWER)]
        assert (await provider.complete(chat(provider))).data.get("usage") is None


# -- upstream errors ---------------------------------------------------------------------------------

STATUSES = [(400, False), (422, False), (401, True), (403, True), (404, True), (429, True), (500, True), (503, True)]


@on_loop
@pytest.mark.parametrize(("status", "retryable"), STATUSES, ids=[str(s) for s, _ in STATUSES])
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_an_upstream_status_is_kept(
    build: Build, scripted: Scripted, status: int, retryable: bool, streaming: bool
) -> None:
    """The status, and whether another attempt may help; the provider itself never retries."""
    scripted.steps = [error_answer(b"%d Oops" % status, "upstream says no")]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await (provider.stream(chat(provider, stream=True)) if streaming else provider.complete(chat(provider)))
    err = caught.value
    assert (err.kind, err.status, err.retryable, err.client_fault) == ("status", status, retryable, not retryable)
    assert scripted.requests == 1


@on_loop
@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_backends_own_refusal_is_named_by_its_status(build: Build, scripted: Scripted, status: int) -> None:
    """The gateway answers 503 with the backends' messages: they must say what the backend said."""
    scripted.steps = [error_answer(b"%d No" % status, "upstream says no", "x")]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    assert f"HTTP {status}" in caught.value.message


@on_loop
async def test_a_refusal_keeps_the_upstreams_own_error(build: Build, scripted: Scripted) -> None:
    scripted.steps = [error_answer(b"400 Bad Request", "max_tokens is too large", param="max_tokens")]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    error = orjson.loads(caught.value.body or b"{}")["error"]
    assert (error["message"], error["param"]) == ("max_tokens is too large", "max_tokens")


@on_loop
async def test_retry_after_is_kept(build: Build, scripted: Scripted) -> None:
    answer = error_answer(b"429 Too Many Requests", "slow down", "requests")
    scripted.steps = [answer.replace(b"connection: close", b"retry-after: 3\r\nconnection: close")]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)


@on_loop
@pytest.mark.parametrize(
    ("status", "body"),
    [(b"503 Service Unavailable", b'{"error":"busy"}'), (b"500 Oops", b"oops, not json"), (b"502 Bad Gateway", b"")],
    ids=["error-string", "not-json", "empty"],
)
async def test_an_error_body_of_any_shape_is_a_retryable_status(
    build: Build, scripted: Scripted, provider_kind: Kind, status: bytes, body: bytes
) -> None:
    scripted.steps = [json_answer(body, status=status)]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    err = caught.value
    assert (err.kind, err.status, err.retryable) == ("status", int(status[:3]), True)
    if provider_kind.relays:
        assert err.body == body
    else:
        validate(orjson.loads(err.body or b""), "ErrorResponse")


@on_loop
async def test_a_refused_connection_is_a_connect_failure(build: Build) -> None:
    with unanswered_port(listen=False) as port:
        provider = build(f"http://127.0.0.1:{port}/v1")
        for streaming in (False, True):
            with pytest.raises(ProviderError) as caught:
                await (provider.stream(chat(provider, stream=True)) if streaming else provider.complete(chat(provider)))
            assert caught.value.kind == "connect" and caught.value.retryable


# -- timeouts ----------------------------------------------------------------------------------------


@on_loop
async def test_connect_timeout(build: Build) -> None:
    with unanswered_port(listen=True) as port:
        provider = build(f"http://127.0.0.1:{port}/v1", connect=0.3)
        for streaming in (False, True):
            started = time.monotonic()
            with pytest.raises(ProviderError) as caught:
                await (provider.stream(chat(provider, stream=True)) if streaming else provider.complete(chat(provider)))
            assert caught.value.retryable and time.monotonic() - started < 0.3 + SLACK


@on_loop
async def test_a_connect_timeout_is_a_connect_failure(build: Build) -> None:
    """Nothing was sent, so nothing was consumed: the gateway records no consumption for it."""
    with unanswered_port(listen=True) as port:
        provider = build(f"http://127.0.0.1:{port}/v1", connect=0.3)
        with pytest.raises(ProviderError) as caught:
            await provider.complete(chat(provider))
        assert caught.value.kind == "connect"


@on_loop
@pytest.mark.parametrize(
    "steps", [[SSE_HEAD, 3.0], [3.0], [SSE_HEAD] + [b": keep-alive\n\n", 0.1] * 30], ids=["head", "no-head", "comments"]
)
async def test_first_token_timeout(build: Build, scripted: Scripted, steps: list) -> None:
    """No first event in time, whether or not the head came, and comments do not count as one."""
    scripted.steps = steps
    provider = build(first_token=0.3)
    started = time.monotonic()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert events == [] and error is not None and error.kind == "timeout"
    assert time.monotonic() - started < 0.3 + SLACK
    assert await until(lambda: scripted.peer_closed == scripted.connections == 1, within=1.0), "kept open"


@on_loop
@pytest.mark.parametrize("keep_alive", [b"", b": keep-alive\n\n"], ids=["silence", "comments"])
async def test_idle_timeout(build: Build, scripted: Scripted, keep_alive: bytes) -> None:
    scripted.steps = [SSE_HEAD, chunk_event("Hello")] + [keep_alive, 0.1] * 30
    provider = build(idle=0.3)
    started = time.monotonic()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert text_of(events) == "Hello" and error is not None and error.kind == "timeout"
    assert time.monotonic() - started < 0.3 + SLACK
    assert await until(lambda: scripted.peer_closed == scripted.connections == 1, within=1.0)


@on_loop
async def test_total_bounds_a_stream_that_keeps_going(build: Build, scripted: Scripted) -> None:
    scripted.steps = [SSE_HEAD] + [chunk_event("x"), 0.1] * 60
    provider = build(total=0.6)
    started = time.monotonic()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert 1 <= len(events) < 20 and error is not None and error.kind == "timeout"  # of 60 events
    assert time.monotonic() - started < 0.6 + SLACK
    assert await until(lambda: scripted.peer_closed == scripted.connections == 1, within=1.0)


@on_loop
async def test_total_bounds_an_answer_that_never_comes(build: Build, scripted: Scripted) -> None:
    scripted.steps = [5.0]
    provider = build(total=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    assert caught.value.kind == "timeout" and time.monotonic() - started < 0.3 + SLACK
    assert await until(lambda: scripted.peer_closed == scripted.connections == 1, within=1.0)


@on_loop
async def test_total_bounds_an_answer_that_trickles_in(build: Build, scripted: Scripted) -> None:
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
    head = json_answer(body)[: -len(body)]
    scripted.steps = [head] + [step for byte in body for step in (bytes([byte]), 0.1)]
    provider = build(total=0.5)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    assert caught.value.kind == "timeout" and time.monotonic() - started < 0.5 + SLACK


@on_loop
@pytest.mark.parametrize(
    ("limit", "steps"),
    [
        ("first_token", [SSE_HEAD, 3.0]),
        ("idle", [SSE_HEAD, chunk_event("Hello"), 3.0]),
        ("total", [SSE_HEAD] + [chunk_event("x"), 0.1] * 30),
    ],
    ids=["first_token", "idle", "total"],
)
async def test_a_timeout_names_its_setting(build: Build, scripted: Scripted, limit: str, steps: list) -> None:
    """The client and the operator read which setting ran out (the gateway passes it on)."""
    scripted.steps = steps
    provider = build(**{limit: 0.3})
    _, error = await run_stream(provider, chat(provider, stream=True))
    assert error is not None and error.kind == "timeout" and f"timeouts.{limit}" in error.message


@on_loop
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_a_timeout_before_any_head_names_its_setting(build: Build, scripted: Scripted, streaming: bool) -> None:
    """With no response head at all, the setting that ran out is named too: the first event's, or
    the whole answer's."""
    scripted.steps = [3.0]
    limit = "first_token" if streaming else "total"
    provider = build(**{limit: 0.3})
    if streaming:
        _, error = await run_stream(provider, chat(provider, stream=True))
    else:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(chat(provider))
        error = caught.value
    assert error is not None and error.kind == "timeout" and f"timeouts.{limit}" in error.message


# -- cancellation and the connection's fate ---------------------------------------------------------


@on_loop
async def test_finished_answers_give_their_connection_back(build: Build, scripted: Scripted) -> None:
    scripted.keep_alive = True
    provider = build()
    scripted.steps = [json_answer(ANSWER, keep_alive=True)]
    for _ in range(2):
        assert (await provider.complete(chat(provider))).data["choices"]
    scripted.steps = chunked_sse(chunk_event("Hello"), chunk_event(" there", finish="stop"), DONE)
    for _ in range(2):
        events, error = await run_stream(provider, chat(provider, stream=True))
        assert error is None and text_of(events) == "Hello there"
    assert (scripted.requests, scripted.connections, scripted.peer_closed) == (4, 1, 0)


def _endless() -> list:
    head = SSE_HEAD.replace(b"connection: close\r\n", b"")
    return [head, chunk_event("Hello"), chunk_event(" there"), 5.0]


@on_loop
async def test_closing_a_stream_midway_closes_its_connection(build: Build, scripted: Scripted) -> None:
    scripted.keep_alive = True
    scripted.steps = _endless()
    provider = build()
    stream = await provider.stream(chat(provider, stream=True))
    assert text_of([await anext(aiter(stream))]) == "Hello"
    await stream.aclose()
    assert await until(lambda: scripted.peer_closed == 1, within=1.0)
    await stream.aclose()  # safe twice
    scripted.steps = [json_answer(ANSWER, keep_alive=True)]
    assert (await provider.complete(chat(provider))).data["choices"]
    assert scripted.connections == 2  # the cut connection was not reused


@on_loop
async def test_a_reader_cancelled_midway_leaves_no_connection_open(build: Build, scripted: Scripted) -> None:
    scripted.steps = _endless()
    provider = build()
    stream = await provider.stream(chat(provider, stream=True))
    seen: list[bytes] = []

    async def read() -> None:
        async for payload in stream:
            seen.append(payload)

    reader = asyncio.ensure_future(read())
    assert await until(lambda: len(seen) >= 2, within=2.0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stream.aclose()
    assert await until(lambda: scripted.peer_closed == 1, within=1.0)


@on_loop
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_a_call_cancelled_before_its_answer_closes_its_connection(
    build: Build, scripted: Scripted, streaming: bool
) -> None:
    scripted.steps = [5.0]
    provider = build()
    call = asyncio.ensure_future(
        provider.stream(chat(provider, stream=True)) if streaming else provider.complete(chat(provider))
    )
    assert await until(lambda: scripted.requests == 1, within=2.0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await until(lambda: scripted.peer_closed == 1, within=1.0)


# -- hostile answers ---------------------------------------------------------------------------------


@on_loop
@pytest.mark.parametrize("ending", [b"\r", b"\r\n"], ids=["cr", "crlf"])
async def test_every_sse_line_ending_is_understood(build: Build, scripted: Scripted, ending: bytes) -> None:
    events = (chunk_event("Hello"), chunk_event(" there"), chunk_event(finish="stop"), DONE)
    scripted.steps = [SSE_HEAD] + [e.replace(b"\n", ending) for e in events]
    provider = build()
    got, error = await run_stream(provider, chat(provider, stream=True))
    assert error is None and text_of(got) == "Hello there"


@on_loop
async def test_a_crlf_split_across_reads_ends_the_event_at_once(build: Build, scripted: Scripted) -> None:
    """The event is complete at its CR; the LF after it comes 0.8 s later, past first_token."""
    first = chunk_event("Hello").replace(b"\n", b"\r\n")
    scripted.steps = [SSE_HEAD, first[:-1], 0.8, b"\n", chunk_event(" you", finish="stop"), DONE]
    provider = build(first_token=0.5)
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert error is None and text_of(events) == "Hello you"


@on_loop
@pytest.mark.parametrize(
    "answer",
    [
        json_answer({"id": "x", "object": "chat.completion", "model": "m1"}),
        json_answer({"id": "x", "object": "chat.completion", "choices": None}),
        json_answer(b'{"id": "x", "choi'),
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"",
    ],
    ids=["no-choices", "null-choices", "cut-json", "not-http", "nothing"],
)
async def test_a_200_that_is_not_an_answer_is_a_retryable_failure(
    build: Build, scripted: Scripted, answer: bytes
) -> None:
    scripted.steps = [answer]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    assert caught.value.retryable


@on_loop
async def test_a_200_carrying_an_error_is_a_retryable_failure(build: Build, scripted: Scripted) -> None:
    scripted.steps = [json_answer({"error": {"message": "overloaded", "type": "server_error"}})]
    provider = build()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(provider))
    assert caught.value.retryable


@on_loop
@pytest.mark.parametrize(
    "event",
    [b"data: {not json\n\n", b'data: {"id":"c","object":"chat.completion.chunk","choices":["x"]}\n\n'],
    ids=["not-json", "choice-not-object"],
)
async def test_an_event_that_is_not_a_chunk(
    build: Build, scripted: Scripted, provider_kind: Kind, event: bytes
) -> None:
    """A relaying kind passes it on for the gateway's relay to judge (and fall back); a parsing
    kind fails the stream itself, retryably."""
    scripted.steps = [SSE_HEAD, event, DONE]
    provider = build()
    events, error = await run_stream(provider, chat(provider, stream=True))
    if provider_kind.relays:
        assert (events, error) == ([event[6:-2]], None)
    else:
        assert events == [] and error is not None and error.retryable


@on_loop
async def test_a_stream_cut_before_it_finished(build: Build, scripted: Scripted, provider_kind: Kind) -> None:
    """A relaying kind ends where the body ended, for the relay to judge from finish_reason; a
    parsing kind says the stream broke. Either way what came before is delivered."""
    scripted.steps = [SSE_HEAD, chunk_event("Hello")]
    provider = build()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert text_of(events) == "Hello"
    if provider_kind.relays:
        assert error is None
    else:
        assert error is not None and error.retryable


@on_loop
@pytest.mark.parametrize("steps", [[SSE_HEAD, DONE], [SSE_HEAD]], ids=["done-at-once", "closed-at-once"])
async def test_a_stream_without_a_single_event(
    build: Build, scripted: Scripted, provider_kind: Kind, steps: list
) -> None:
    """A relaying kind gives an empty stream (dispatch then fails the attempt, retryably); a
    parsing kind fails it itself."""
    scripted.steps = steps
    provider = build()
    events, error = await run_stream(provider, chat(provider, stream=True))
    assert events == []
    if provider_kind.relays:
        assert error is None
    else:
        assert error is not None and error.retryable
