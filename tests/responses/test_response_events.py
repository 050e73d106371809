"""The translation of chat stream frames into Responses events, in memory: the orders a scripted
backend cannot easily produce (parallel calls, text then a call, a fault of ours mid-stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from router.pipeline.responses_output import Echo
from router.pipeline.responses_stream import ResponseEvents
from router.pipeline.streaming import DONE, frame
from tests.openai_schema import validate_response_event

USAGE = {
    "prompt_tokens": 7,
    "completion_tokens": 5,
    "total_tokens": 12,
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return frame(orjson.dumps(body))


def call(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": arguments}
    if name:
        fn["name"] = name
    out: dict[str, Any] = {"index": index, "function": fn}
    if call_id:
        out |= {"id": call_id, "type": "function"}
    return out


def parse(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert name == "event: " + event["type"]
            validate_response_event(event)
            events.append(event)
    return events


def translate(frames: list[bytes], fail: bool = False) -> list[dict[str, Any]]:
    async def source() -> AsyncGenerator[bytes, None]:
        for f in frames:
            yield f
        if fail:
            raise RuntimeError("a fault of ours")

    async def run() -> bytes:
        events = ResponseEvents(Echo.of({"model": "m"}, "req_abc"))
        return b"".join([e async for e in events.relay(source())])

    out = parse(asyncio.run(run()))
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def test_parallel_calls_are_two_items_in_order():
    events = translate(
        [
            chunk({"role": "assistant", "tool_calls": [call(0, "call_a", "f", '{"x"')]}),
            chunk({"tool_calls": [call(0, arguments=": 1}")]}),
            chunk({"tool_calls": [call(1, "call_b", "g", "{}")]}),
            chunk({}, "tool_calls"),
            chunk(None, usage=USAGE),
            DONE,
        ]
    )
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["call_id"]) for e in added] == [(0, "call_a"), (1, "call_b")]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in done] == [("f", '{"x": 1}'), ("g", "{}")]
    final = events[-1]
    assert final["type"] == "response.completed"
    assert [i["call_id"] for i in final["response"]["output"]] == ["call_a", "call_b"]
    assert final["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    assert final["response"]["usage"]["total_tokens"] == 12


def test_text_then_a_call_closes_the_text_first():
    events = translate(
        [
            chunk({"content": "Let me look."}),
            chunk({"tool_calls": [call(0, "call_a", "f", "{}")]}),
            chunk({}, "tool_calls"),
            chunk(None, usage=USAGE),
            DONE,
        ]
    )
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    output = events[-1]["response"]["output"]
    assert [i["type"] for i in output] == ["message", "function_call"]
    assert output[0]["content"][0]["text"] == "Let me look."


def test_a_fault_of_ours_mid_stream_ends_with_one_response_failed():
    events = translate([chunk({"content": "Hel"})], fail=True)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.failed") == 1 and kinds[-1] == "response.failed"


def test_a_stream_that_ends_without_its_end_fails_once():
    events = translate([chunk({"content": "Hel"})])
    assert [e["type"] for e in events][-1] == "response.failed"
    assert sum(e["type"] == "response.failed" for e in events) == 1


def test_length_cut_ends_with_response_incomplete():
    events = translate([chunk({"content": "a b"}, "length"), chunk(None, usage=USAGE), DONE])
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"
