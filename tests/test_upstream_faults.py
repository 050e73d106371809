"""Upstreams that misbehave at the byte level, through the whole gateway: a raw TCP server writes
exactly the bytes (and pauses) each test scripts, beside a well-behaved simulated backend."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import backend_entry
from tests.openai_schema import validate

MSG = [{"role": "user", "content": "hello"}]
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
Step = bytes | float  # bytes to write, or seconds to pause


def chunk_event(text: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {"content": text} if text is not None else {}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def json_answer(body: dict[str, Any] | bytes, status: bytes = b"200 OK") -> bytes:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, len(raw), raw))


class Scripted:
    """Answers each request with ``steps``, then closes the connection."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.requests = 0
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            await reader.readexactly(int(length.group(1)) if length else 0)
            self.requests += 1
            for step in list(self.steps):
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                else:
                    await asyncio.sleep(step)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server


@pytest.fixture
def scripted(loop_thread) -> Iterator[Scripted]:
    upstream = Scripted()
    server = loop_thread.run(upstream.start())
    yield upstream
    server.close()


def _gateway(scripted: Scripted, start_sim_backend, start_gateway, **timeouts: float):
    """The scripted upstream (cheapest, so tried first) and a good simulated one."""
    good = start_sim_backend("good")
    limits = {"connect": 2.0, "first_token": 5.0, "idle": 5.0, "total": 30.0, **timeouts}
    return start_gateway([
        {"name": "scripted", "class": "datacenter", "type": "openai", "base_url": f"http://127.0.0.1:{scripted.port}/v1",
         "models": ["m1"], "price": {"input": 0, "output": 0}, "timeouts": limits},
        backend_entry(good, price={"input": 9, "output": 9}),
    ], routing={"exploration": 0.0, "eject_after_failures": 100})


def _stream(gw, **extra: Any) -> tuple[httpx.Response, list[dict[str, Any]], float]:
    started = time.monotonic()
    resp = httpx.post(gw.url + "/v1/chat/completions", headers=gw.auth(), timeout=30,
                      json={"model": "m1", "messages": MSG, "max_tokens": 4, "stream": True, **extra})
    frames = [f.removeprefix("data: ") for f in resp.text.split("\n\n") if f]
    assert frames and (frames[-1] == "[DONE]" or "error" in frames[-1]), resp.text
    events = [orjson.loads(f) for f in frames if f != "[DONE]"]
    return resp, events, time.monotonic() - started


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


# -- line endings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\r", b"\r\n"], ids=["cr", "crlf"])
def test_every_sse_line_ending_is_understood(scripted, start_sim_backend, start_gateway, ending: bytes) -> None:
    scripted.steps = [SSE_HEAD] + [e.replace(b"\n", ending) for e in
                                   (chunk_event("Hello"), chunk_event(" there"), chunk_event(finish="stop"),
                                    b"data: [DONE]\n\n")]
    gw = _gateway(scripted, start_sim_backend, start_gateway)
    resp, events, _ = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "scripted"
    assert _text(events) == "Hello there"


def test_a_crlf_split_across_reads_ends_the_event_at_once(scripted, start_sim_backend, start_gateway) -> None:
    """The event is complete at its CR; the LF after it comes 1.5 s later, past first_token."""
    first = chunk_event("Hello").replace(b"\n", b"\r\n")
    scripted.steps = [SSE_HEAD, first[:-1], 1.5, b"\n", chunk_event(" you", finish="stop"), b"data: [DONE]\n\n"]
    gw = _gateway(scripted, start_sim_backend, start_gateway, first_token=1.0)
    resp, events, _ = _stream(gw)
    assert (resp.headers["x-fedrouter-backend"], _text(events)) == ("scripted", "Hello you")


# -- deadlines count events, not bytes ---------------------------------------------------------


def test_comments_do_not_put_off_the_first_token_deadline(scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [SSE_HEAD] + [b": keep-alive\n\n", 0.1] * 60
    gw = _gateway(scripted, start_sim_backend, start_gateway, first_token=0.5)
    resp, events, took = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "good" and _text(events)
    assert took < 3.0, f"fell back only after {took:.1f} s; the comments kept it waiting"


def test_comments_do_not_put_off_the_idle_deadline(scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [SSE_HEAD, chunk_event("Hello")] + [b": keep-alive\n\n", 0.1] * 60
    gw = _gateway(scripted, start_sim_backend, start_gateway, idle=0.5)
    resp, events, took = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "scripted"
    assert "timeouts.idle" in events[-1]["error"]["message"] and took < 3.0
    validate(events[-1], "ErrorResponse")
    assert _text(events[:-1]) == "Hello"


def test_total_bounds_a_stream_that_keeps_going(scripted, start_sim_backend, start_gateway) -> None:
    scripted.steps = [SSE_HEAD] + [chunk_event("x"), 0.1] * 100
    gw = _gateway(scripted, start_sim_backend, start_gateway, total=1.0)
    resp, events, took = _stream(gw)
    assert resp.headers["x-fedrouter-backend"] == "scripted"
    assert "timeouts.total" in events[-1]["error"]["message"] and took < 3.0
    [row] = gw.usage("acme")["recent"]
    assert (row["backend"], row["outcome"]) == ("scripted", "upstream_error")


def test_total_bounds_a_body_that_trickles_in(scripted, start_sim_backend, start_gateway) -> None:
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
    head = json_answer(body)[:-len(body)]
    scripted.steps = [head] + [step for byte in body for step in (bytes([byte]), 0.1)]
    gw = _gateway(scripted, start_sim_backend, start_gateway, total=1.0)
    started = time.monotonic()
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=4)
    assert resp.headers["x-fedrouter-backend"] == "good" and time.monotonic() - started < 3.0


# -- answers that are not answers ----------------------------------------------------------------


@pytest.mark.parametrize("body", [{"id": "x", "object": "chat.completion", "model": "m1"},
                                  {"id": "x", "object": "chat.completion", "choices": None}])
def test_a_200_without_choices_falls_back(scripted, start_sim_backend, start_gateway, body) -> None:
    scripted.steps = [json_answer(body)]
    gw = _gateway(scripted, start_sim_backend, start_gateway)
    resp = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, max_tokens=4)
    assert (resp.headers["x-fedrouter-backend"], resp.headers["x-fedrouter-attempts"]) == ("good", "2")
    assert resp.parse().choices[0].message.content
