"""The OpenAI-compatible API, driven by the official openai SDK over real HTTP."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import orjson
import pytest

from tests.conftest import backend_entry
from tests.openai_schema import validate


@pytest.fixture
def gw(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1", ["m1", "embed-1"])
    gateway = start_gateway([backend_entry(sim, models=["m1", "embed-1"])])
    gateway.sims = {"dc1": sim}
    return gateway


def test_chat_completion_non_streaming(gw):
    resp = gw.client().chat.completions.with_raw_response.create(
        model="m1", messages=[{"role": "user", "content": "Say hello"}], max_tokens=5
    )
    completion = resp.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage.completion_tokens == 5
    assert resp.headers["x-fedrouter-backend"] == "dc1"
    assert resp.headers["x-request-id"].startswith("req_")
    validate(orjson.loads(resp.content), "CreateChatCompletionResponse")


def test_streaming_with_usage_has_exactly_one_usage_chunk(gw):
    stream = gw.client().chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].choices == [] and chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].usage.completion_tokens == 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    for c in chunks:
        validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")


def test_streaming_without_usage_has_no_usage_chunk_but_is_billed(gw):
    raw = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        json={"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in raw.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    payloads = [orjson.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    assert all(p["choices"] for p in payloads), "a usage chunk leaked to a client that did not ask"
    # The gateway asked the upstream for usage on the client's behalf, so billing is exact.
    assert gw.sims["dc1"].last_request()["body"]["stream_options"] == {"include_usage": True}
    row = gw.usage("acme")["recent"][0]
    assert row["request_id"] == raw.headers["x-request-id"]
    assert (row["output_tokens"], row["tokens_source"], row["outcome"]) == (3, "upstream", "ok")


def test_stream_without_upstream_usage_is_counted_at_gateway(gw):
    gw.sims["dc1"].set(omit_usage=True)
    chunks = list(
        gw.client().chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    validate(chunks[-1].model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    row = gw.usage("acme")["recent"][0]
    assert row["tokens_source"] == "counted"
    assert row["output_tokens"] == chunks[-1].usage.completion_tokens
    assert row["input_tokens"] > 0


def test_unknown_fields_and_tools_pass_through(gw):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    completion = gw.client().chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        seed=7,
        n=1,
        response_format={"type": "text"},
        extra_body={"top_k": 3, "x_custom": {"a": [1, 2]}},
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    body = gw.sims["dc1"].last_request()["body"]
    assert body["top_k"] == 3 and body["x_custom"] == {"a": [1, 2]} and body["seed"] == 7
    assert body["tools"] == tools and body["response_format"] == {"type": "text"}


def test_streamed_tool_call_deltas(gw):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    chunks = list(
        gw.client().chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "x"}], tools=tools, stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "lookup"
    assert "".join(d.function.arguments or "" for d in deltas) == '{"location": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.asyncio
async def test_async_client_streaming(gw):
    client = gw.async_client()
    stream = await client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 3
    await client.close()


def test_completions_endpoint(gw):
    completion = gw.client().completions.create(model="m1", prompt="Once upon", max_tokens=4)
    assert completion.object == "text_completion" and completion.usage.completion_tokens == 4
    chunks = list(
        gw.client().completions.create(
            model="m1", prompt="Once", max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.completion_tokens == 2


def test_embeddings_base64_and_float(gw):
    client = gw.client()
    default = client.embeddings.create(model="embed-1", input=["a", "b"])  # the SDK asks for base64
    assert gw.sims["dc1"].last_request()["body"]["encoding_format"] == "base64"
    floats = client.embeddings.create(model="embed-1", input=["a", "b"], encoding_format="float")
    assert len(default.data) == 2 and default.data[0].embedding == pytest.approx(floats.data[0].embedding)
    raw = httpx.post(
        gw.url + "/v1/embeddings",
        headers=gw.auth(),
        json={"model": "embed-1", "input": "a", "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack(f"<{len(floats.data[0].embedding)}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats.data[0].embedding)
    assert floats.usage.prompt_tokens > 0
    # The published schema describes the float form only; base64 is checked by decoding above.
    validate(
        httpx.post(
            gw.url + "/v1/embeddings",
            headers=gw.auth(),
            json={"model": "embed-1", "input": "a", "encoding_format": "float"},
        ).json(),
        "CreateEmbeddingResponse",
    )


def test_models_list_and_retrieve(gw):
    client = gw.client()
    models = client.models.list()
    assert sorted(m.id for m in models.data) == ["embed-1", "m1"]
    validate(httpx.get(gw.url + "/v1/models", headers=gw.auth()).json(), "ListModelsResponse")
    assert client.models.retrieve("m1").id == "m1"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "could not parse the JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "Missing required parameter: 'model'"),
        (b'{"model": 5, "messages": []}', 400, "Invalid type for 'model'"),
        (b'{"model": "m1"}', 400, "Missing required parameter: 'messages'"),
        (b'{"model": "m1", "messages": "hi"}', 400, "Invalid type for 'messages'"),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "'stream'"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "does not exist"),
    ],
)
def test_bad_requests_get_openai_errors(gw, body, status, fragment):
    resp = httpx.post(
        gw.url + "/v1/chat/completions", headers={**gw.auth(), "content-type": "application/json"}, content=body
    )
    assert resp.status_code == status
    assert fragment in resp.json()["error"]["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["x-request-id"].startswith("req_")
    validate(resp.json(), "ErrorResponse")
    assert gw.usage()["totals"]["requests"] == 0  # nothing reached a backend, nothing billed


def test_oversized_body_is_413_even_without_content_length(gw, start_gateway):
    small = start_gateway([backend_entry(gw.sims["dc1"])], limits={"max_body_bytes": 1000})

    def chunks():
        yield b'{"model": "m1", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}]}'

    resp = httpx.post(small.url + "/v1/chat/completions", headers=small.auth(), content=chunks())
    assert resp.status_code == 413 and "limit of 1000 bytes" in resp.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as exc:
        small.client().chat.completions.create(model="m1", messages=[{"role": "user", "content": "y" * 2000}])
    assert exc.value.status_code == 413


def test_authentication(gw):
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="fr-wrong", max_retries=0).models.list()
    assert exc.value.code == "invalid_api_key"
    resp = httpx.get(gw.url + "/v1/models")
    assert resp.status_code == 401 and resp.headers["x-should-retry"] == "false"
    validate(resp.json(), "ErrorResponse")


def test_unknown_route_and_method(gw):
    resp = httpx.get(gw.url + "/v1/nothing-here", headers=gw.auth())
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
    resp = httpx.get(gw.url + "/v1/chat/completions", headers=gw.auth())
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    validate(resp.json(), "ErrorResponse")
    # A trailing slash is another URL, not a redirect to wherever the Host header points.
    resp = httpx.post(
        gw.url + "/v1/chat/completions/",
        headers={**gw.auth(), "host": "evil.example"},
        json={"model": "m1", "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
    assert "location" not in resp.headers and resp.headers["x-request-id"]


def test_admin_routes_need_admin_key(gw):
    assert httpx.get(gw.url + "/admin/v1/backends", headers=gw.auth()).status_code == 401
    assert httpx.get(gw.url + "/admin/v1/backends").status_code == 401
    assert httpx.get(gw.url + "/metrics").status_code == 401
    ok = httpx.get(gw.url + "/admin/v1/backends", headers=gw.admin())
    assert ok.status_code == 200 and ok.json()["data"][0]["name"] == "dc1"


def test_admin_creates_keys_only_for_declared_tenants(gw):
    resp = httpx.post(gw.url + "/admin/v1/keys", headers=gw.admin(), json={"tenant": "acme"})
    key = resp.json()["key"]
    assert openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0).models.list().data
    bad = httpx.post(gw.url + "/admin/v1/keys", headers=gw.admin(), json={"tenant": "ghost"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_tenant"
    malformed = httpx.post(gw.url + "/admin/v1/keys", headers=gw.admin(), json={"tenants": "acme"})
    assert malformed.status_code == 400
    validate(malformed.json(), "ErrorResponse")


def test_metrics_exposed(gw):
    gw.client().chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    text = httpx.get(gw.url + "/metrics", headers=gw.admin()).text
    assert 'fedrouter_requests_total{backend="dc1",model="m1",outcome="ok",route="chat/completions"} 1.0' in text
    assert 'fedrouter_backend_up{backend="dc1",backend_class="datacenter"} 1.0' in text
