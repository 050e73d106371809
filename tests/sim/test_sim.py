"""The simulated backend, driven over loopback by aiohttp and by the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import openai
import pytest
import pytest_asyncio

from router.sim.backend import SimBackend, SimBehavior, start_sim

USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]
PROMPT_TOKENS = 2 + 3 + 3 + 3  # words plus 3 per message
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@dataclass
class Sim:
    backend: SimBackend
    url: str
    http: aiohttp.ClientSession
    sdk: openai.AsyncOpenAI

    async def set(self, **changes: object) -> None:
        async with self.http.post(f"{self.url}/_sim/behavior", json=changes) as response:
            assert response.status == 200, await response.text()

    async def sse(self, path: str, body: dict) -> list[str]:
        """The raw `data:` payloads of a stream."""
        async with self.http.post(self.url + path, json=body) as response:
            assert response.headers["content-type"] == "text/event-stream"
            text = (await response.read()).decode()
        frames = text.split("\n\n")
        assert frames[-1] == ""
        assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames[:-1])
        return [frame.removeprefix("data: ") for frame in frames[:-1]]


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Sim]:
    backend = SimBackend("eu-1", models=["sim-a", "sim-b"])
    runner, port = await start_sim(backend)
    url = f"http://127.0.0.1:{port}"
    async with (
        aiohttp.ClientSession() as http,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk,
    ):
        yield Sim(backend, url, http, sdk)
    await runner.cleanup()


@pytest.mark.asyncio
async def test_chat_non_streaming(sim: Sim) -> None:
    raw = await sim.sdk.chat.completions.with_raw_response.create(model="m1", messages=USER)
    assert raw.headers["x-sim-backend"] == "eu-1"
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-sim-") and completion.model == "m1"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content.split() == ("The quick brown fox jumps over the lazy dog. " * 2).split()[:16]
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert (completion.usage.completion_tokens, completion.usage.total_tokens) == (16, PROMPT_TOKENS + 16)
    assert sim.backend.last_request["messages"] == USER
    assert sim.backend.last_headers["authorization"] == "Bearer x"

    parts = [{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]}]
    cut = await sim.sdk.chat.completions.create(model="m1", messages=parts, max_completion_tokens=3, n=2)
    assert [c.index for c in cut.choices] == [0, 1]
    assert all(c.message.content == "The quick brown " and c.finish_reason == "length" for c in cut.choices)
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens) == (6, 6)


@pytest.mark.asyncio
@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_streaming_usage_only_when_asked(sim: Sim, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await sim.sdk.chat.completions.create(model="m1", messages=USER, stream=True, max_tokens=4, **options)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == (1 if include_usage else 0)
    if include_usage:
        assert with_usage[0] is chunks[-1] and chunks[-1].choices == []
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (PROMPT_TOKENS, 4)

    payloads = await sim.sse("/v1/chat/completions", {"model": "m1", "messages": USER, "stream": True, **options})
    assert payloads[-1] == "[DONE]"
    assert all(("usage" in json.loads(p)) == include_usage for p in payloads[:-1])


@pytest.mark.asyncio
async def test_tool_calls(sim: Sim) -> None:
    whole = await sim.sdk.chat.completions.create(model="m1", messages=USER, tools=WEATHER)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_sim_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    stream = await sim.sdk.chat.completions.create(model="m1", messages=USER, tools=WEATHER, stream=True)
    chunks = [c async for c in stream]
    opening = chunks[0].choices[0].delta.tool_calls[0]
    assert opening.id.startswith("call_sim_") and opening.function.name == "get_weather"
    fragments = [c.choices[0].delta.tool_calls[0].function.arguments for c in chunks if c.choices[0].delta.tool_calls]
    assert len(fragments) > 2 and json.loads("".join(fragments)) == {"location": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    plain = await sim.sdk.chat.completions.create(model="m1", messages=USER, tools=WEATHER, tool_choice="none")
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "stop"


@pytest.mark.asyncio
async def test_embeddings_float_and_base64(sim: Sim) -> None:
    body = {"model": "e1", "input": ["alpha beta", "gamma"], "dimensions": 6}
    async with sim.http.post(f"{sim.url}/v1/embeddings", json={**body, "encoding_format": "float"}) as response:
        floats = await response.json()
    vectors = [item["embedding"] for item in floats["data"]]
    assert [len(v) for v in vectors] == [6, 6] and vectors[0] != vectors[1]
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    decoded = await sim.sdk.embeddings.create(model="e1", input=["alpha beta", "gamma"], dimensions=6)
    assert sim.backend.last_request["encoding_format"] == "base64"
    assert [item.embedding for item in decoded.data] == vectors  # deterministic, float32-exact
    single = await sim.sdk.embeddings.create(model="e1", input="alpha beta", dimensions=6)
    assert single.data[0].embedding == vectors[0]


@pytest.mark.asyncio
async def test_fail_status_then_recover(sim: Sim) -> None:
    await sim.set(fail_status=503, fail_count=1)
    with pytest.raises(openai.InternalServerError) as failure:
        await sim.sdk.chat.completions.create(model="m1", messages=USER)
    assert failure.value.status_code == 503 and failure.value.body["type"] == "server_error"
    ok = await sim.sdk.chat.completions.create(model="m1", messages=USER)
    assert ok.choices[0].message.content
    assert sim.backend.behavior.fail_status == 0 and sim.backend.stats["failed"] == 1

    await sim.set(fail_status=429)
    for _ in range(2):  # -1: every request fails while fail_status is set
        async with sim.http.post(f"{sim.url}/v1/completions", json={"model": "m", "prompt": "x"}) as response:
            error = (await response.json())["error"]
            assert (response.status, response.headers["retry-after"]) == (429, "0")
            assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.asyncio
async def test_drop_after_chunks_breaks_the_client(sim: Sim) -> None:
    await sim.set(drop_after_chunks=2)
    body = {"model": "m1", "messages": USER, "stream": True}
    received = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with sim.http.post(f"{sim.url}/v1/chat/completions", json=body) as response:
            async for line in response.content:
                received.append(line)
    assert not any(b"[DONE]" in line for line in received)
    assert sum(b'"content":"' in line and b'"content":""' not in line for line in received) <= 2
    with pytest.raises(openai.APIConnectionError):
        await sim.sdk.chat.completions.create(model="m1", messages=USER)
    assert sim.backend.stats["dropped"] == 2 and sim.backend.stats["completed"] == 0


@pytest.mark.asyncio
async def test_stall_sends_headers_then_hangs(sim: Sim) -> None:
    await sim.set(stall_s=5.0)
    body = {"model": "m1", "messages": USER, "stream": True}
    started = time.monotonic()
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200 and time.monotonic() - started < 1.0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(response.content.readline(), 0.3)


@pytest.mark.asyncio
async def test_latency_and_power(sim: Sim) -> None:
    await sim.set(ttft_s=0.1, tokens_per_s=100, power_watts=300)
    started = time.monotonic()
    raw = await sim.sdk.chat.completions.with_raw_response.create(model="m1", messages=USER, max_tokens=10)
    assert time.monotonic() - started >= 0.2  # ttft + 10 tokens at 100/s
    assert raw.headers["x-power-watts"] == "300"


@pytest.mark.asyncio
async def test_omit_usage(sim: Sim) -> None:
    await sim.set(omit_usage=True)
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json={"model": "m1", "messages": USER}) as response:
        assert "usage" not in await response.json()
    body = {"model": "m1", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    payloads = await sim.sse("/v1/chat/completions", body)
    assert not any("usage" in p for p in payloads)


@pytest.mark.asyncio
async def test_completions_and_models(sim: Sim) -> None:
    done = await sim.sdk.completions.create(model="c1", prompt="say this please", max_tokens=2)
    assert done.object == "text_completion" and done.choices[0].text == "The quick "
    assert (done.choices[0].finish_reason, done.usage.prompt_tokens, done.usage.completion_tokens) == ("length", 3, 2)
    many = await sim.sdk.completions.create(model="c1", prompt=["a", "b c"], n=1)
    assert [c.index for c in many.choices] == [0, 1] and many.usage.prompt_tokens == 3

    options = {"include_usage": True}
    stream = await sim.sdk.completions.create(model="c1", prompt="x", stream=True, max_tokens=3, stream_options=options)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "The quick brown "
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [3]

    models = await sim.sdk.models.list()
    assert [m.id for m in models.data] == ["sim-a", "sim-b"]
    assert {m.owned_by for m in models.data} == {"eu-1"}


@pytest.mark.asyncio
async def test_anthropic_messages(sim: Sim) -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-sim", "max_tokens": 3, "system": "be kind", "messages": USER[1:]}
    async with sim.http.post(f"{sim.url}/v1/messages", json=body, headers=headers) as response:
        message = await response.json()
    assert message["id"].startswith("msg_sim_") and message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": "The quick brown "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("max_tokens", None)
    assert message["usage"] == {"input_tokens": 3 + 3 + 2, "output_tokens": 3}
    assert sim.backend.last_headers["anthropic-version"] == "2023-06-01"

    async with sim.http.post(f"{sim.url}/v1/messages", json={**body, "stream": True}, headers=headers) as response:
        text = (await response.read()).decode()
    events = [frame.split("\n") for frame in text.split("\n\n") if frame]
    names = [e[0].removeprefix("event: ") for e in events]
    data = [json.loads(e[1].removeprefix("data: ")) for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [d["type"] for d in data] == names
    assert "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta") == "The quick brown "
    assert data[-2]["delta"]["stop_reason"] == "max_tokens" and data[-2]["usage"] == {"output_tokens": 3}


@pytest.mark.asyncio
async def test_cancelled_stream_is_counted(sim: Sim) -> None:
    await sim.set(tokens_per_s=50)
    body = {"model": "m1", "messages": USER, "stream": True, "max_tokens": 200}
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json=body) as response:
        await response.content.readline()
        await response.content.readline()
        response.close()
    for _ in range(100):
        if sim.backend.stats["cancelled_streams"]:
            break
        await asyncio.sleep(0.02)
    assert sim.backend.stats["cancelled_streams"] == 1 and sim.backend.stats["completed"] == 0


@pytest.mark.asyncio
async def test_bad_requests_and_control(sim: Sim) -> None:
    url = f"{sim.url}/v1/chat/completions"
    async with sim.http.post(url, data=b"{not json") as response:
        assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_request_error"
    async with sim.http.post(url, json={"messages": USER}) as response:
        assert response.status == 400 and (await response.json())["error"]["param"] == "model"
    async with sim.http.post(f"{sim.url}/_sim/behavior", json={"no_such_field": 1}) as response:
        assert response.status == 400
    async with sim.http.post(f"{sim.url}/_sim/behavior", json={"ttft_s": "slow"}) as response:
        assert response.status == 400

    await sim.set(reply="hi", omit_usage=True)
    async with sim.http.get(f"{sim.url}/_sim/stats") as response:
        stats = await response.json()
    assert stats["requests"] == 2 and stats["by_path"] == {"/v1/chat/completions": 2}
    assert stats["behavior"]["reply"] == "hi" and response.headers["x-sim-backend"] == "eu-1"
    async with sim.http.get(f"{sim.url}/_sim/last_request") as response:
        assert (await response.json())["body"] == {"messages": USER}
    async with sim.http.post(f"{sim.url}/_sim/reset") as response:
        assert response.status == 200
    assert sim.backend.behavior == SimBehavior() and sim.backend.stats["requests"] == 0
