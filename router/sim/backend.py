"""A simulated LLM backend: a real OpenAI- and Anthropic-compatible server with tunable latency and faults.

The demo, the benchmark and the tests run it over loopback as an upstream. Its behaviour
(:class:`SimBehavior`) can be changed while it runs through ``POST /_sim/behavior``.
Injected failures apply to the inference endpoints only, so health probes of
``GET /v1/models`` never consume ``fail_count``.

Generation is deterministic: the reply's words, repeated or cut to ``max_tokens`` (or
``max_completion_tokens``), 16 when neither is given, each sent as a ``"word "`` piece.
``finish_reason`` is ``"length"`` (Anthropic: ``"max_tokens"``) when the client set the
limit, else ``"stop"`` (``"end_turn"``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import importlib
import itertools
import math
import os
import random
import signal
import struct
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

_DONE = b"data: [DONE]\n\n"
_TOOL_ARGUMENTS = ('{"location": ', '"Paris"}')  # streamed as two fragments, as OpenAI does

Body = dict[str, Any]
Frames = Iterator[tuple[bytes, bool]]  # (bytes to send, whether they hold a content chunk)


@dataclass
class SimBehavior:
    """How the simulated backend answers; every field can be changed at run time."""

    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    fail_status: int = 0
    fail_count: int = -1
    stall_s: float = 0.0
    stall_probability: float = 1.0  # the share of streams that stall for stall_s (seeded by the sim's name)
    drop_after_chunks: int = -1
    omit_usage: bool = False
    power_watts: float | None = None
    reply: str = "The quick brown fox jumps over the lazy dog."

    def update(self, changes: dict[str, Any]) -> None:
        """Apply all changes or none; raise ValueError on an unknown or mistyped field."""
        defaults = dataclasses.asdict(SimBehavior())
        for key, value in changes.items():
            if key not in defaults:
                raise ValueError(f"unknown behavior field {key!r}")
            numeric = isinstance(defaults[key], float) or key == "power_watts"
            fits = type(value) in (int, float) if numeric else type(value) is type(defaults[key])
            if not fits and not (key == "power_watts" and value is None):
                raise ValueError(f"behavior field {key!r} cannot be {value!r}")
        if changes.get("fail_status", 0) not in (0, *range(400, 600)):
            raise ValueError("fail_status must be 0 or an HTTP error status (400-599)")
        for key, value in changes.items():
            numeric = isinstance(defaults[key], float) or (key == "power_watts" and value is not None)
            setattr(self, key, float(value) if numeric else value)

    def take_failure(self) -> int:
        """Return the status the current request must fail with (0: none), consuming ``fail_count``."""
        status = self.fail_status
        if not status:
            return 0
        if self.fail_count > 0:
            self.fail_count -= 1
        elif self.fail_count == 0:
            status = 0
        if self.fail_count == 0:
            self.fail_status, self.fail_count = 0, -1
        return status


class _ApiError(Exception):
    """An error answered in OpenAI's shape; a 429 also says ``retry-after: 0``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> web.Response:
        kind, code = ("server_error", None) if self.status >= 500 else ("invalid_request_error", None)
        if self.status == 429:
            kind, code = "requests", "rate_limit_exceeded"
        error = {"message": self.message, "type": kind, "param": self.param, "code": code}
        response = _json({"error": error}, self.status)
        if self.status == 429:
            response.headers["retry-after"] = "0"
        return response


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _words(content: Any) -> int:
    """Whitespace-separated words in a string or in a list of text parts."""
    if isinstance(content, list):
        return sum(_words(part.get("text")) for part in content if isinstance(part, dict))
    return len(content.split()) if isinstance(content, str) else 0


def _messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        raise _ApiError(400, "'messages' must be a list", "messages")
    return sum(_words(m.get("content")) + 3 for m in messages if isinstance(m, dict))


def _positive_int(body: Body, key: str, default: int, maximum: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= maximum:
        raise _ApiError(400, f"'{key}' must be an integer between 1 and {maximum}", key)
    return value


def _plan(body: Body, reply: str) -> tuple[list[str], bool]:
    """The pieces to generate and whether the client's token limit cut them."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    count = _positive_int(body, key, 16, 1 << 20)
    words = itertools.cycle(reply.split() or ["..."])
    return [word + " " for word in itertools.islice(words, count)], body.get(key) is not None


def _tool_name(body: Body) -> str | None:
    """The function to call instead of answering with text, or None."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    chosen = choice if isinstance(choice, dict) else tools[0]
    function = chosen.get("function") if isinstance(chosen, dict) else None
    return str(function.get("name", "tool")) if isinstance(function, dict) else "tool"


def _streamed_usage(body: Body, usage: Body | None) -> Body | None:
    """The usage to stream: only when asked for with ``stream_options.include_usage``."""
    options = body.get("stream_options")
    return usage if isinstance(options, dict) and options.get("include_usage") else None


def _without_null_usage(body: Body) -> Body:
    return body if body.get("usage") is not None else {k: v for k, v in body.items() if k != "usage"}


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _openai_frames(
    base: Body, first: list[Body], steps: Iterable[list[Body]], last: list[Body], usage: Body | None
) -> Frames:
    """OpenAI SSE: ``first``, one counted frame per step, ``last``, the usage chunk, then [DONE].

    ``usage`` is None unless it must be sent; then every chunk carries ``"usage": null``.
    """
    head = b"data: " + orjson.dumps(base)[:-1] + b',"choices":'
    tail = b"}\n\n" if usage is None else b',"usage":null}\n\n'

    def frame(choices: list[Body]) -> bytes:  # one chunk per choice, as OpenAI does
        return b"".join(head + orjson.dumps([choice]) + tail for choice in choices)

    if first:
        yield frame(first), False
    for step in steps:
        yield frame(step), True
    yield frame(last), False
    if usage is not None:
        yield head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n", False
    yield _DONE, False


def _event(kind: str, **fields: Any) -> bytes:
    """One Anthropic SSE event."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) for t in value)


def _embedding_inputs(raw: Any) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and _is_tokens(raw):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) or _is_tokens(x) for x in raw):
        return raw
    raise _ApiError(400, "'input' must be a string, a list of strings or a list of token arrays", "input")


def _unit_vector(key: bytes, dims: int) -> array[float]:
    """A deterministic float32 unit vector derived from a hash of ``key``."""
    values = [v - 32767.5 for v in struct.unpack(f"<{dims}H", hashlib.shake_256(key).digest(2 * dims))]
    norm = math.sqrt(sum(v * v for v in values))
    return array("f", [v / norm for v in values])


def _fresh_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "completed": 0,
        "cancelled_streams": 0,
        "failed": 0,
        "dropped": 0,
        "stalled": 0,
        "by_path": {},
    }


class SimBackend:
    """One simulated backend: its behaviour, its counters and the aiohttp app that serves it."""

    def __init__(self, name: str = "sim", behavior: SimBehavior | None = None, models: list[str] | None = None) -> None:
        self.name = name
        self.behavior = behavior or SimBehavior()
        self._initial = dataclasses.replace(self.behavior)
        self.stats: dict[str, Any] = _fresh_stats()
        self._rng = random.Random(name)  # the same stalls in the same order on every run
        self.last_request: Body | None = None
        self.last_headers: dict[str, str] = {}
        model = {"object": "model", "created": int(time.time()), "owned_by": name}
        data = [{"id": m, **model} for m in models or ["sim-model"]]
        self._models_body = orjson.dumps({"object": "list", "data": data})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(self._stamp)
        for path, handle in (
            ("/v1/chat/completions", self._chat),
            ("/v1/completions", self._completions),
            ("/v1/embeddings", self._embeddings),
            ("/v1/messages", self._messages),
        ):
            app.router.add_post(path, self._endpoint(handle))
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/_sim/behavior", self._set_behavior)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_get("/_sim/last_request", self._last_request)
        app.router.add_post("/_sim/reset", self._reset)
        return app

    def reset(self) -> None:
        """Zero the counters and restore, in place, the behaviour given to the constructor."""
        self.stats, self.last_request, self.last_headers = _fresh_stats(), None, {}
        self._rng = random.Random(self.name)
        for field in dataclasses.fields(self._initial):
            setattr(self.behavior, field.name, getattr(self._initial, field.name))

    # -- plumbing ----------------------------------------------------------------------------

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-sim-backend"] = self.name
        if self.behavior.power_watts is not None:
            response.headers["x-power-watts"] = f"{self.behavior.power_watts:g}"

    def _count(self, request: web.Request) -> None:
        self.stats["requests"] += 1
        by_path = self.stats["by_path"]
        by_path[request.path] = by_path.get(request.path, 0) + 1

    def _endpoint(
        self, handle: Callable[[web.Request, Body], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await handle(request, await self._admit(request))
            except _ApiError as exc:
                return exc.response()

        return handler

    async def _admit(self, request: web.Request) -> Body:
        """Count, parse and record the request, then inject the configured failure."""
        self._count(request)
        self.last_headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise _ApiError(400, f"Malformed JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "The request body must be a JSON object")
        self.last_request = body
        if status := self.behavior.take_failure():
            self.stats["failed"] += 1
            raise _ApiError(status, f"Simulated failure with status {status} from {self.name}")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise _ApiError(400, "You must provide a model parameter", "model")
        return body

    def _drop(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Close the connection abruptly; aiohttp then fails to send ``response``, quietly."""
        self.stats["dropped"] += 1
        if request.transport is not None:
            request.transport.abort()
        return response

    async def _reply(self, request: web.Request, body: Body, tokens: int) -> web.StreamResponse:
        """A whole JSON answer, after the simulated generation time."""
        b = self.behavior
        delay = b.ttft_s + (tokens / b.tokens_per_s if b.tokens_per_s > 0 else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if b.drop_after_chunks >= 0:
            return self._drop(request, web.Response())
        self.stats["completed"] += 1
        return _json(_without_null_usage(body))

    async def _stream(self, request: web.Request, frames: Frames) -> web.StreamResponse:
        """Send SSE frames: headers at once, then stall and ttft, then a gap between content chunks."""
        b = self.behavior
        gap = 1.0 / b.tokens_per_s if b.tokens_per_s > 0 else 0.0
        drop_after = b.drop_after_chunks
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        try:
            p = b.stall_probability
            stall = b.stall_s if p >= 1 or (p > 0 and self._rng.random() < p) else 0.0
            self.stats["stalled"] += stall > 0
            if stall + b.ttft_s > 0:
                await asyncio.sleep(stall + b.ttft_s)
            if not gap and drop_after < 0:  # nothing to pace: one write
                await response.write(b"".join(frame for frame, _ in frames))
            else:
                sent = 0
                for frame, is_content in frames:
                    if is_content and sent == drop_after:
                        return self._drop(request, response)
                    if is_content and sent and gap:
                        await asyncio.sleep(gap)
                    sent += is_content
                    await response.write(frame)
            await response.write_eof()
        except ConnectionResetError:  # the client went away; aiohttp ends the exchange quietly
            self.stats["cancelled_streams"] += 1
            return response
        except asyncio.CancelledError:
            self.stats["cancelled_streams"] += 1
            raise
        self.stats["completed"] += 1
        return response

    # -- OpenAI ------------------------------------------------------------------------------

    async def _chat(self, request: web.Request, body: Body) -> web.StreamResponse:
        n, tool = _positive_int(body, "n", 1, 128), _tool_name(body)
        pieces, cut = _plan(body, self.behavior.reply)
        finish = "length" if cut else "stop"
        if tool:
            pieces, finish = list(_TOOL_ARGUMENTS), "tool_calls"
        usage = None if self.behavior.omit_usage else _usage(_messages_tokens(body.get("messages")), n, pieces)
        base = {"id": _new_id("chatcmpl-sim-"), "object": "chat.completion", "created": int(time.time())}
        base |= {"model": body["model"]}
        calls = [{"id": _new_id("call_sim_"), "type": "function"} for _ in range(n)]
        if not body.get("stream"):

            def message(i: int) -> Body:
                if not tool:
                    return {"role": "assistant", "content": "".join(pieces), "refusal": None}
                call = {**calls[i], "function": {"name": tool, "arguments": "".join(pieces)}}
                return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}

            choices = [{"index": i, "message": message(i), "logprobs": None, "finish_reason": finish} for i in range(n)]
            return await self._reply(request, {**base, "choices": choices, "usage": usage}, len(pieces))

        def chunk(delta: Callable[[int], Body], finish_reason: str | None = None) -> list[Body]:
            return [{"index": i, "delta": delta(i), "logprobs": None, "finish_reason": finish_reason} for i in range(n)]

        if tool:
            opening = {"role": "assistant", "content": None}
            function = {"name": tool, "arguments": ""}
            first = chunk(lambda i: {**opening, "tool_calls": [{"index": 0, **calls[i], "function": function}]})
            steps = (chunk(lambda _, p=p: {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces)
        else:
            first = chunk(lambda _: {"role": "assistant", "content": ""})
            steps = (chunk(lambda _, p=p: {"content": p}) for p in pieces)
        base["object"] = "chat.completion.chunk"
        last = chunk(lambda _: {}, finish)
        return await self._stream(request, _openai_frames(base, first, steps, last, _streamed_usage(body, usage)))

    async def _completions(self, request: web.Request, body: Body) -> web.StreamResponse:
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise _ApiError(400, "'prompt' must be a string or a list of strings", "prompt")
        count = len(prompts) * _positive_int(body, "n", 1, 128)
        pieces, cut = _plan(body, self.behavior.reply)
        finish = "length" if cut else "stop"
        usage = None if self.behavior.omit_usage else _usage(sum(map(_words, prompts)), count, pieces)
        base = {"id": _new_id("cmpl-sim-"), "object": "text_completion", "created": int(time.time())}
        base |= {"model": body["model"]}

        def choices(text: str, finish_reason: str | None = None) -> list[Body]:
            return [{"text": text, "index": i, "logprobs": None, "finish_reason": finish_reason} for i in range(count)]

        if not body.get("stream"):
            result = {**base, "choices": choices("".join(pieces), finish), "usage": usage}
            return await self._reply(request, result, len(pieces))
        steps = (choices(p) for p in pieces)
        frames = _openai_frames(base, [], steps, choices("", finish), _streamed_usage(body, usage))
        return await self._stream(request, frames)

    async def _embeddings(self, request: web.Request, body: Body) -> web.StreamResponse:
        inputs = _embedding_inputs(body.get("input"))
        dims = _positive_int(body, "dimensions", 8, 8192)
        as_base64 = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for index, item in enumerate(inputs):
            is_text = isinstance(item, str)
            tokens += len(item.split()) if is_text else len(item)
            vector = _unit_vector(item.encode() if is_text else orjson.dumps(item), dims)
            embedding = base64.b64encode(vector.tobytes()).decode() if as_base64 else vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        usage = None if self.behavior.omit_usage else {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self._reply(request, {"object": "list", "data": data, "model": body["model"], "usage": usage}, 0)

    async def _models(self, request: web.Request) -> web.Response:
        self._count(request)
        self.stats["completed"] += 1
        return web.Response(body=self._models_body, content_type="application/json")

    # -- Anthropic ---------------------------------------------------------------------------

    async def _messages(self, request: web.Request, body: Body) -> web.StreamResponse:
        pieces, cut = _plan(body, self.behavior.reply)
        stop = {"stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None}
        prompt = _messages_tokens(body.get("messages")) + _words(body.get("system"))
        usage = None if self.behavior.omit_usage else {"input_tokens": prompt, "output_tokens": len(pieces)}
        message = {"id": _new_id("msg_sim_"), "type": "message", "role": "assistant", "model": body["model"]}
        if not body.get("stream"):
            content = [{"type": "text", "text": "".join(pieces)}]
            return await self._reply(request, {**message, "content": content, **stop, "usage": usage}, len(pieces))
        message |= {"content": [], "stop_reason": None, "stop_sequence": None}
        end: Body = {"delta": stop}
        if usage is not None:
            message["usage"], end["usage"] = {**usage, "output_tokens": 1}, {"output_tokens": len(pieces)}

        def frames() -> Frames:
            block = {"type": "text", "text": ""}
            yield (
                _event("message_start", message=message) + _event("content_block_start", index=0, content_block=block),
                False,
            )
            for piece in pieces:
                yield _event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece}), True
            yield _event("content_block_stop", index=0) + _event("message_delta", **end) + _event("message_stop"), False

        return await self._stream(request, frames())

    # -- control -----------------------------------------------------------------------------

    async def _set_behavior(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of SimBehavior fields")
            self.behavior.update(changes)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            return _ApiError(400, str(exc)).response()
        return _json(dataclasses.asdict(self.behavior))

    async def _stats(self, request: web.Request) -> web.Response:
        return _json({**self.stats, "name": self.name, "behavior": dataclasses.asdict(self.behavior)})

    async def _last_request(self, request: web.Request) -> web.Response:
        return _json({"body": self.last_request, "headers": self.last_headers})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json({"reset": True})


def _usage(prompt: int, choices: int, pieces: list[str]) -> Body:
    completion = choices * len(pieces)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def start_sim(backend: SimBackend, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``backend`` on host:port (0 picks a free port); stop it with ``await runner.cleanup()``."""
    runner = web.AppRunner(backend.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]


async def _serve(backend: SimBackend, host: str, port: int) -> None:
    runner, bound = await start_sim(backend, host, port)
    print(f"sim {backend.name} listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m router.sim", description="Run a simulated LLM backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="sim")
    parser.add_argument("--model", action="append", dest="models", help="a model id to list (repeatable)")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    parser.add_argument("--power-watts", type=float, default=None)
    args = parser.parse_args(argv)
    behavior = SimBehavior(ttft_s=args.ttft_ms / 1000, tokens_per_s=args.tokens_per_s, power_watts=args.power_watts)
    try:
        loop_factory = importlib.import_module("uvloop").new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(SimBackend(args.name, behavior, args.models), args.host, args.port))


if __name__ == "__main__":
    main()
