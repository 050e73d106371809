"""LiteLLMProvider against the simulated backend's Anthropic Messages API (and, for tool calls and
embeddings, litellm's OpenAI route to the same sim): answers in OpenAI's shapes, failures mapped."""

from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from providers import registry
from providers.base import BackendInfo, Provider, ProviderError, Timeouts, UpstreamRequest
from router.sim.backend import SimBackend, start_sim
from tests.openai_schema import validate

# One event loop for the module: litellm pools its HTTP clients per process, and a loop per test
# would leave each test's pool open behind it. litellm's first call imports a module (its GitHub
# Copilot authenticator) whose pydantic TypedDicts warn about ``ReadOnly``; that warning only.
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore:Items? .* (is|are) using the `ReadOnly` qualifier:UserWarning"),
]

UPSTREAM = "claude-3-5-haiku-20241022"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something nice"}]
PROMPT_TOKENS = 2 + (3 + 3)  # the sim's count: system words, then words + 3 per message
REPLY = "The quick brown fox jumps over the lazy dog."


def anthropic_info() -> BackendInfo:
    return BackendInfo(
        name="anth", backend_class="datacenter", type="litellm", models={"claude-haiku": f"anthropic/{UPSTREAM}"}
    )


def make_provider(port: int, **timeouts: float) -> Any:
    from providers.litellm_backed import LiteLLMProvider

    return LiteLLMProvider(
        anthropic_info(), base_url=f"http://127.0.0.1:{port}", api_key="sk-ant-test", timeouts=Timeouts(**timeouts)
    )


def chat(max_tokens: int = 5, **extra: Any) -> UpstreamRequest:
    payload = {"model": f"anthropic/{UPSTREAM}", "messages": MESSAGES, "max_tokens": max_tokens, **extra}
    return UpstreamRequest("chat/completions", payload, orjson.dumps(payload))


async def drain(stream: Any) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(payload) async for payload in stream]
    finally:
        await stream.aclose()


class SimControl:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def set(self, **behavior: Any) -> None:
        async with httpx.AsyncClient() as client:
            (await client.post(f"{self.url}/_sim/behavior", json=behavior)).raise_for_status()

    async def get(self, what: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{self.url}/_sim/{what}")).json()  # type: ignore[no-any-return]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim_port() -> AsyncIterator[int]:
    runner, port = await start_sim(SimBackend("anth", models=[UPSTREAM, "sim-model"]))
    yield port
    await runner.cleanup()
    import litellm

    await litellm.close_litellm_async_clients()


@pytest_asyncio.fixture(loop_scope="module")
async def sim(sim_port: int) -> SimControl:
    control = SimControl(sim_port)
    async with httpx.AsyncClient() as client:
        (await client.post(f"{control.url}/_sim/reset")).raise_for_status()
    return control


@pytest_asyncio.fixture(loop_scope="module")
async def provider(sim: SimControl) -> Any:
    return make_provider(sim.port)


def error_of(err: ProviderError) -> dict[str, Any]:
    return orjson.loads(err.body or b"{}")["error"]  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # type: ignore[no-any-return]


# -- answers ------------------------------------------------------------------------------------


async def test_registry_builds_it() -> None:
    built = registry.build(
        "litellm",
        anthropic_info(),
        "http://127.0.0.1:1",
        "sk-ant-test",
        timeouts=Timeouts(connect=1.0, first_token=2.0, idle=3.0, total=4.0),
    )
    assert isinstance(built, Provider)
    await built.close()


async def test_completion_is_openai_shaped(provider: Any, sim: SimControl) -> None:
    resp = await provider.complete(chat(max_tokens=5))
    data = resp.data
    validate(data, "CreateChatCompletionResponse")
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert orjson.loads(resp.body) == data
    assert data["object"] == "chat.completion"
    [choice] = data["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["message"] == {"role": "assistant", "content": "The quick brown fox jumps ", "refusal": None}
    assert choice["finish_reason"] == "length"
    assert data["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5, "total_tokens": PROMPT_TOKENS + 5}


async def test_the_sim_saw_an_anthropic_request(provider: Any, sim: SimControl) -> None:
    await provider.complete(chat(max_tokens=3, temperature=0.5, stop=["zebra"]))
    last = await sim.get("last_request")
    assert last["headers"]["x-api-key"] == "sk-ant-test"
    assert "anthropic-version" in last["headers"]
    body = last["body"]
    assert body["model"] == UPSTREAM and body["max_tokens"] == 3 and body["stop_sequences"] == ["zebra"]
    assert body["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert (await sim.get("stats"))["by_path"] == {"/v1/messages": 1}


async def test_stream_yields_chunks_then_a_usage_chunk(provider: Any, sim: SimControl) -> None:
    chunks = await drain(await provider.stream(chat(max_tokens=9)))
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["object"] == "chat.completion.chunk"
        assert "usage" not in chunk or chunk["choices"] == []
    *content, finish, usage = chunks
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    assert text == " ".join(REPLY.split()[:9]) + " "
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 9, "total_tokens": PROMPT_TOKENS + 9}
    assert len({c["id"] for c in chunks}) == 1
    assert (await sim.get("last_request"))["body"]["stream"] is True


async def test_client_fields_cannot_steer_litellm(provider: Any, sim: SimControl) -> None:
    steer = {
        "api_base": f"http://127.0.0.1:{free_port()}",
        "api_key": "sk-stolen",
        "mock_response": "mocked",
        "num_retries": 5,
        "metadata": {"k": "v"},
    }
    resp = await provider.complete(chat(max_tokens=2, **steer))
    assert resp.data["choices"][0]["message"]["content"] == "The quick "
    last = await sim.get("last_request")
    assert last["headers"]["x-api-key"] == "sk-ant-test"
    assert "metadata" not in last["body"]


async def test_params_the_provider_lacks_are_dropped(provider: Any, sim: SimControl) -> None:
    resp = await provider.complete(chat(max_tokens=2, seed=7, presence_penalty=0.0, frequency_penalty=0.0, n=1))
    assert resp.data["usage"]["completion_tokens"] == 2
    body = (await sim.get("last_request"))["body"]
    assert not {"seed", "presence_penalty", "frequency_penalty", "n"} & set(body)


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True}])
async def test_params_that_shape_the_answer_are_refused(provider: Any, sim: SimControl, extra: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat(**extra))
    err = caught.value
    assert (err.kind, err.status, err.retryable) == ("status", 400, False)
    assert error_of(err)["param"] == next(iter(extra))
    assert (await sim.get("stats"))["requests"] == 0


async def test_legacy_completions_are_refused(provider: Any, sim: SimControl) -> None:
    request = UpstreamRequest("completions", {"model": f"anthropic/{UPSTREAM}", "prompt": "Hi"})
    for call in (provider.complete, provider.stream):
        with pytest.raises(ProviderError) as caught:
            await call(request)
        err = caught.value
        assert (err.kind, err.status, err.retryable) == ("status", 400, False)
        assert "not supported" in error_of(err)["message"]
    assert (await sim.get("stats"))["requests"] == 0


# -- failures -----------------------------------------------------------------------------------


# 401 and 404 are the backend's (its key, its models): another backend may serve the request.
@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (503, True), (400, False), (422, False), (401, True), (404, True)],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_status_maps_to_provider_error(
    provider: Any, sim: SimControl, status: int, retryable: bool, streaming: bool
) -> None:
    await sim.set(fail_status=status, fail_count=1)
    with pytest.raises(ProviderError) as caught:
        await (provider.stream(chat()) if streaming else provider.complete(chat()))
    err = caught.value
    assert (err.kind, err.status, err.retryable) == ("status", status, retryable)
    error = error_of(err)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == f"Simulated failure with status {status} from anth"
    assert error["type"] == (
        "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    )
    if status == 429:
        assert err.retry_after == 0.0
    assert (await sim.get("stats"))["requests"] == 1  # litellm did not retry
    assert (await provider.complete(chat(max_tokens=1))).data["usage"]["completion_tokens"] == 1


async def test_connection_dropped_before_the_answer(provider: Any, sim: SimControl) -> None:
    await sim.set(drop_after_chunks=0)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat())
    assert caught.value.kind in ("connect", "protocol") and caught.value.retryable
    with pytest.raises(ProviderError) as caught:
        await provider.stream(chat())
    assert caught.value.kind in ("connect", "protocol") and caught.value.retryable


async def test_connection_dropped_mid_stream(provider: Any, sim: SimControl) -> None:
    await sim.set(drop_after_chunks=3)
    stream = await provider.stream(chat(max_tokens=8))
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderError) as caught:
        async for payload in stream:
            received.append(orjson.loads(payload))
    await stream.aclose()
    assert caught.value.kind in ("connect", "protocol")
    assert 1 <= len(received) <= 3
    assert all(c["choices"] and c["choices"][0]["finish_reason"] is None for c in received)


async def test_connection_refused() -> None:
    provider = make_provider(free_port())
    for call in (provider.complete, provider.stream):
        with pytest.raises(ProviderError) as caught:
            await call(chat())
        assert caught.value.kind == "connect"


async def test_first_token_timeout(sim: SimControl) -> None:
    await sim.set(ttft_s=2.0)
    provider = make_provider(sim.port, first_token=0.2)
    started = time.perf_counter()
    with pytest.raises(ProviderError) as caught:
        await provider.stream(chat())
    assert caught.value.kind == "timeout"
    assert time.perf_counter() - started < 1.5


async def test_idle_timeout_mid_stream(sim: SimControl) -> None:
    await sim.set(tokens_per_s=2.0)  # half a second between chunks
    provider = make_provider(sim.port, idle=0.2)
    stream = await provider.stream(chat(max_tokens=4))
    with pytest.raises(ProviderError) as caught:
        await drain(stream)
    assert caught.value.kind == "timeout"


async def test_total_timeout(sim: SimControl) -> None:
    await sim.set(ttft_s=2.0)
    provider = make_provider(sim.port, total=0.3)
    started = time.perf_counter()
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat())
    assert caught.value.kind == "timeout"
    assert time.perf_counter() - started < 1.5


# -- tool calls and embeddings, through litellm's OpenAI route to the sim ------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]


@pytest_asyncio.fixture(loop_scope="module")
async def openai_route(sim: SimControl) -> Any:
    from providers.litellm_backed import LiteLLMProvider

    info = BackendInfo(
        name="via-litellm",
        backend_class="datacenter",
        type="litellm",
        models={"m": "openai/sim-model", "e": "openai/sim-embed"},
    )
    return LiteLLMProvider(info, base_url=f"{sim.url}/v1", api_key="sk-test")


async def test_tool_calls_are_openai_shaped(openai_route: Any) -> None:
    payload = {"model": "openai/sim-model", "messages": MESSAGES, "tools": TOOLS}
    data = (await openai_route.complete(UpstreamRequest("chat/completions", payload))).data
    validate(data, "CreateChatCompletionResponse")
    [choice] = data["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_sim_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}

    chunks = await drain(await openai_route.stream(UpstreamRequest("chat/completions", payload)))
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0]["id"].startswith("call_sim_") and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"location": "Paris"}'
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


async def test_embeddings_floats_and_base64(openai_route: Any, sim: SimControl) -> None:
    payload: dict[str, Any] = {"model": "openai/sim-embed", "input": ["hello world", "bye"]}
    floats = (await openai_route.complete(UpstreamRequest("embeddings", payload))).data
    validate(floats, "CreateEmbeddingResponse")
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    resp = await openai_route.complete(UpstreamRequest("embeddings", {**payload, "encoding_format": "base64"}))
    assert "encoding_format" not in (await sim.get("last_request"))["body"]  # floats asked for, encoded here
    for encoded, plain in zip(resp.data["data"], floats["data"], strict=True):
        raw = base64.b64decode(encoded["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(plain["embedding"], abs=1e-7)
    assert orjson.loads(resp.body) == resp.data
