"""The Responses API (POST /v1/responses) through the gateway, with a simulated chat-only backend:
the official openai SDK's calls, every body and event checked against OpenAI's published
schemas, fallback, mid-stream failure, billing equal to chat's, and the 400s for what it refuses."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import backend_entry
from tests.openai_schema import validate, validate_response_event

REPLY = "The quick brown fox jumps over the lazy dog."
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def gw(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1", ["m1"])
    gateway = start_gateway([backend_entry(sim)])
    gateway.sims["dc1"] = sim
    return gateway


def post(gw, body: dict[str, Any], tenant: str = "acme") -> httpx.Response:
    return httpx.post(gw.url + "/v1/responses", headers=gw.auth(tenant), json=body, timeout=30)


def stream_events(url: str, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed Response's events as sent, each checked: its schema, its SSE name, its number."""
    events: list[dict[str, Any]] = []
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", url + "/v1/responses", headers=headers, json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == name
                validate_response_event(event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_plain_response_with_the_sdk(gw):
    response = gw.client().responses.create(model="m1", input="Say hello.", instructions="Be brief.")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == REPLY + " " + " ".join(REPLY.split()[:7]) + " "  # 16 words, cycled
    assert response.instructions == "Be brief."
    assert response.usage is not None
    # The sim counts 3 tokens a message and one a word: the instructions became a system message.
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (10, 16, 26)
    sent = gw.sims["dc1"].last_request()["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    assert "input" not in sent and "instructions" not in sent


def test_plain_body_validates_against_the_response_schema(gw):
    resp = post(gw, {"model": "m1", "input": "hi", "max_output_tokens": 5, "temperature": 0.5, "metadata": {"a": "b"}})
    assert resp.status_code == 200
    body = resp.json()
    validate(body, "Response")
    assert body["id"].startswith("resp_")
    assert body["status"] == "incomplete"  # the sim stops at the cap, with finish_reason "length"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["temperature"] == 0.5 and body["metadata"] == {"a": "b"} and body["max_output_tokens"] == 5
    assert resp.headers["x-fedrouter-backend"] == "dc1"
    sent = gw.sims["dc1"].last_request()["body"]
    assert sent["max_tokens"] == 5 and sent["temperature"] == 0.5 and sent["metadata"] == {"a": "b"}


def test_streamed_response_with_the_sdk(gw):
    with gw.client().responses.stream(model="m1", input="Say hello.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.output_tokens == 16
    assert final.usage.total_tokens == final.usage.input_tokens + 16


def test_every_streamed_event_validates_in_the_documented_order(gw):
    events = stream_events(gw.url, gw.keys["acme"], {"model": "m1", "input": "hi"})
    kinds = types(events)
    assert kinds[0:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 16
    assert kinds[-1] == "response.completed"
    done = events[-1]["response"]
    validate(done, "Response")
    assert done["status"] == "completed"
    assert done["usage"]["output_tokens"] == 16
    assert done["output"][0]["content"][0]["text"] == "".join(
        e["delta"] for e in events if e["type"] == "response.output_text.delta"
    )


def test_stream_served_through_asgi_is_the_same(start_sim_backend, start_gateway):
    """Under uvicorn the first event is not written early: the relay gives it, translated the same."""
    sim = start_sim_backend("u1", ["m1"])
    with start_gateway([backend_entry(sim)], [{"name": "acme"}], server="uvicorn") as gw:
        events = stream_events(gw.url, gw.keys["acme"], {"model": "m1", "input": "hi"})
    assert types(events)[:2] == ["response.created", "response.in_progress"]
    assert types(events)[-1] == "response.completed"


def test_function_tool_call_round_trip(gw):
    client = gw.client()
    first = client.responses.create(model="m1", input="Weather in Paris?", tools=[TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}  # what the sim's tool call always says
    sent = gw.sims["dc1"].last_request()["body"]
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]

    second = client.responses.create(
        model="m1",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'},
        ],
        tools=[TOOL],
        tool_choice="none",
    )
    assert second.status == "completed" and second.output_text
    sent = gw.sims["dc1"].last_request()["body"]
    assert sent["tool_choice"] == "none"
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}
        ],
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"celsius": 21}'}


def test_streamed_function_call_events(gw):
    events = stream_events(gw.url, gw.keys["acme"], {"model": "m1", "input": "Weather?", "tools": [TOOL]})
    kinds = types(events)
    assert kinds[2] == "response.output_item.added" and events[2]["item"]["type"] == "function_call"
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert done["arguments"] == deltas and json.loads(deltas) == {"location": "Paris"}
    assert done["name"] == "get_weather"
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert events[-1]["response"]["output"][0]["call_id"] == events[2]["item"]["call_id"]


class City(BaseModel):
    city: str
    items: list[int]


def test_text_format_json_schema(gw):
    answer = {"city": "Paris", "items": list(range(1, 14))}
    gw.sims["dc1"].set(reply=json.dumps(answer))  # 16 words: the sim's default length
    schema = City.model_json_schema()
    response = gw.client().responses.create(
        model="m1",
        input="Where?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text) == answer
    sent = gw.sims["dc1"].last_request()["body"]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    assert "text" not in sent
    parsed = gw.client().responses.parse(model="m1", input="Where?", text_format=City)
    assert parsed.output_parsed == City(**answer)


def test_image_parts_become_chat_image_parts(gw):
    url = "data:image/png;base64,iVBORw0KGgo="
    resp = post(
        gw,
        {
            "model": "m1",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": url, "detail": "low"},
                    ],
                }
            ],
        },
    )
    assert resp.status_code == 200
    assert gw.sims["dc1"].last_request()["body"]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        }
    ]


def test_identifying_fields_never_reach_a_volunteer(start_sim_backend, start_gateway):
    sim = start_sim_backend("vol", ["m1"])
    gw = start_gateway([backend_entry(sim, cls="volunteer")])
    resp = post(gw, {"model": "m1", "input": "hi", "metadata": {"team": "x"}, "user": "u1"})
    assert resp.status_code == 200
    sent = sim.last_request()["body"]
    assert "metadata" not in sent and "user" not in sent
    assert resp.json()["metadata"] == {"team": "x"}  # echoed to the client, who sent it


def test_stream_falls_back_invisibly_before_its_first_event(start_sim_backend, start_gateway):
    broken = start_sim_backend("a", ["m1"], fail_status=500)
    good = start_sim_backend("b", ["m1"])
    gw = start_gateway([backend_entry(broken), backend_entry(good)])
    events = stream_events(gw.url, gw.keys["acme"], {"model": "m1", "input": "hi", "provider": {"order": ["a", "b"]}})
    kinds = types(events)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.failed" not in kinds
    assert broken.stats()["failed"] >= 1 and good.stats()["completed"] == 1
    recent = gw.usage()["recent"]
    assert [(r["backend"], r["outcome"]) for r in recent if r["billed"]] == [("b", "ok")]


def test_failure_after_the_first_event_ends_with_one_response_failed(start_sim_backend, start_gateway):
    sim = start_sim_backend("d", ["m1"], drop_after_chunks=4)
    gw = start_gateway([backend_entry(sim)])
    events = stream_events(gw.url, gw.keys["acme"], {"model": "m1", "input": "hi"})
    kinds = types(events)
    assert kinds[0] == "response.created"
    assert kinds.count("response.failed") == 1 and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"


def _billed(gw, request_id: str) -> dict[str, Any]:
    records = [r for r in gw.usage()["recent"] if r["request_id"] == request_id]
    assert len(records) == 1
    return records[0]


@pytest.mark.parametrize("stream", [False, True])
def test_billed_exactly_as_the_equivalent_chat_request(gw, stream):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    chat = {"model": "m1", "messages": messages, "max_tokens": 12, "stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    responses = {"model": "m1", "instructions": "Be brief.", "input": "Say hello.", "max_output_tokens": 12}
    ids = []
    for path, body in (("/v1/chat/completions", chat), ("/v1/responses", {**responses, "stream": stream})):
        resp = httpx.post(gw.url + path, headers=gw.auth(), json=body, timeout=30)
        assert resp.status_code == 200
        ids.append(resp.headers["x-request-id"])
    as_chat, as_responses = (_billed(gw, rid) for rid in ids)
    for field in ("input_tokens", "output_tokens", "cost_usd", "tokens_source", "backend", "model", "billed"):
        assert as_responses[field] == as_chat[field], field
    assert as_chat["output_tokens"] == 12 and as_chat["cost_usd"] > 0


STATE = "keeps no response state"


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id", STATE),
        ({"store": True}, "store", STATE),
        ({"conversation": "conv_1"}, "conversation", STATE),
        ({"background": True}, "background", STATE),
        ({"input": [{"type": "frobnicate", "x": 1}]}, "input[0].type", "'frobnicate'"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "stored item"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type", "audio"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search'"),
        ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[1].type", "'file_search'"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "'computer_use_preview'"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "function tools only"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}}},
            "text.format.schema",
            "Invalid JSON schema",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"properties": {"a": {"type": 5}}}}}},
            "text.format.schema",
            "text.format.schema.properties.a.type",
        ),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": "{}"}}}, "text.format.schema", "Schema"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "text.format.name"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "text.format.type"),
        ({"input": []}, "input", "at least one"),
        ({"max_output_tokens": -1}, "max_output_tokens", "max_output_tokens"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(gw, extra, param, fragment):
    resp = post(gw, {"model": "m1", "input": "hi", **extra})
    assert resp.status_code == 400, resp.text
    validate(resp.json(), "ErrorResponse")
    error = resp.json()["error"]
    assert error["param"] == param
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert resp.headers["x-should-retry"] == "false"
    assert gw.sims["dc1"].stats()["requests"] == 0
    assert gw.usage()["totals"]["requests"] == 0


def test_the_sdk_raises_the_400(gw):
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().responses.create(model="m1", input="hi", previous_response_id="resp_1")
    assert exc.value.param == "previous_response_id"


def test_a_bad_key_is_answered_before_a_bad_body(gw):
    resp = httpx.post(
        gw.url + "/v1/responses",
        headers={"authorization": "Bearer fr-wrong"},
        json={"model": "m1", "input": "hi", "store": True},
        timeout=10,
    )
    assert resp.status_code == 401


def test_store_false_and_stateless_defaults_are_accepted(gw):
    resp = post(gw, {"model": "m1", "input": "hi", "store": False, "previous_response_id": None, "truncation": "auto"})
    assert resp.status_code == 200
    assert resp.json()["store"] is False
    sent = gw.sims["dc1"].last_request()["body"]
    assert not {"store", "previous_response_id", "truncation"} & set(sent)
