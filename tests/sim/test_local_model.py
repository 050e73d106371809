"""LocalModelServer serves the bundled SmolLM2 in the OpenAI wire format, checked with the openai SDK."""

from collections.abc import Iterator

import openai
import pytest

from router.sim.local_model import LocalModelServer, bundled_model_path

FINISH_REASONS = {"stop", "length"}
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    with LocalModelServer(ctx_size=512) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: LocalModelServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_bundled_model_is_a_gguf() -> None:
    path = bundled_model_path()
    assert path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_base_url_is_loopback_with_real_port(server: LocalModelServer) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/v1")
    assert int(server.base_url.removesuffix("/v1").rsplit(":", 1)[1]) > 0


def test_models_lists_alias(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["smollm2-135m"]


def test_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="smollm2-135m", messages=MESSAGES, max_tokens=8)
    assert response.object == "chat.completion"
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.finish_reason in FINISH_REASONS
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streaming_chat_completion_reports_usage_once(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].choices == []
    usage = usage_chunks[0].usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 8
    finish_reasons = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert len(finish_reasons) == 1
    assert finish_reasons[0] in FINISH_REASONS


def test_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model="smollm2-135m", input=["hello", "world"])
    assert response.object == "list"
    assert [item.index for item in response.data] == [0, 1]
    dimensions = {len(item.embedding) for item in response.data}
    assert len(dimensions) == 1
    assert dimensions.pop() > 0
    assert response.usage.prompt_tokens > 0


def test_base_url_before_start_raises() -> None:
    local = LocalModelServer()
    with pytest.raises(RuntimeError, match="not running"):
        _ = local.base_url
    local.stop()


def test_busy_port_fails_clearly(server: LocalModelServer) -> None:
    port = int(server.base_url.removesuffix("/v1").rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="failed to start"):
        LocalModelServer(port=port, ctx_size=256).start()


def test_through_the_gateway_end_to_end(server: LocalModelServer, start_gateway) -> None:
    """A real model behind the gateway: routed, relayed, metered."""
    gw = start_gateway(
        [
            {
                "name": "llama-local",
                "class": "volunteer",
                "type": "openai",
                "base_url": server.base_url,
                "models": {"smollm2": "smollm2-135m"},
                "price": {"input": 0, "output": 0},
                "energy": {"joules_per_token": 0.05},
            }
        ]
    )
    client = gw.client("acme", timeout=60)
    reply = client.chat.completions.with_raw_response.create(model="smollm2", messages=MESSAGES, max_tokens=6)
    assert reply.headers["x-fedrouter-backend"] == "llama-local"
    completion = reply.parse()
    assert completion.choices[0].finish_reason in FINISH_REASONS
    assert 0 < completion.usage.completion_tokens <= 6
    chunks = list(client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, stream=True))
    assert chunks[-1].choices[0].finish_reason in FINISH_REASONS
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    rows = gw.usage("acme")["recent"]
    assert len(rows) == 2 and all(r["tokens_source"] == "upstream" and r["output_tokens"] > 0 for r in rows)
