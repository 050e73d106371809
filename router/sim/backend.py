"""A simulated LLM backend: a real OpenAI- and Anthropic-compatible server with tunable latency and faults.

The demo, the benchmark and the tests run it over loopback as an upstream. Its behaviour
(:class:`SimBehavior`) can be changed while it runs through ``POST /_sim/behavior``.
Injected failures apply to the inference endpoints only, so health probes of
``GET /v1/models`` never consume ``fail_count``. The bodies and frames it answers with are
built in ``router.sim.shapes``.

``finish_reason`` is ``"length"`` (Anthropic: ``"max_tokens"``) when the client set the
limit, else ``"stop"`` (``"end_turn"``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from router.sim.behavior import SimBehavior
from router.sim.shapes import (
    TOOL_ARGUMENTS,
    ApiError,
    Body,
    Frames,
    anthropic_event,
    embedding_inputs,
    json_response,
    messages_tokens,
    new_id,
    openai_frames,
    plan,
    positive_int,
    streamed_usage,
    tool_name,
    unit_vector,
    usage_counts,
    without_null_usage,
    words,
)

__all__ = ["SimBackend", "SimBehavior", "start_sim"]


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
            except ApiError as exc:
                return exc.response()

        return handler

    async def _admit(self, request: web.Request) -> Body:
        """Count, parse and record the request, then inject the configured failure."""
        self._count(request)
        self.last_headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"Malformed JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object")
        self.last_request = body
        if status := self.behavior.take_failure():
            self.stats["failed"] += 1
            raise ApiError(status, f"Simulated failure with status {status} from {self.name}")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ApiError(400, "You must provide a model parameter", "model")
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
        return json_response(without_null_usage(body))

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
        n, tool = positive_int(body, "n", 1, 128), tool_name(body)
        pieces, cut = plan(body, self.behavior.reply)
        finish = "length" if cut else "stop"
        if tool:
            pieces, finish = list(TOOL_ARGUMENTS), "tool_calls"
        usage = None if self.behavior.omit_usage else usage_counts(messages_tokens(body.get("messages")), n, pieces)
        base = {"id": new_id("chatcmpl-sim-"), "object": "chat.completion", "created": int(time.time())}
        base |= {"model": body["model"]}
        calls = [{"id": new_id("call_sim_"), "type": "function"} for _ in range(n)]
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

        def same(delta: Body) -> list[Body]:  # the same delta for every choice
            return chunk(lambda _: delta)

        if tool:
            opening = {"role": "assistant", "content": None}
            function = {"name": tool, "arguments": ""}
            first = chunk(lambda i: {**opening, "tool_calls": [{"index": 0, **calls[i], "function": function}]})
            steps = (same({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces)
        else:
            first = same({"role": "assistant", "content": ""})
            steps = (same({"content": p}) for p in pieces)
        base["object"] = "chat.completion.chunk"
        last = chunk(lambda _: {}, finish)
        return await self._stream(request, openai_frames(base, first, steps, last, streamed_usage(body, usage)))

    async def _completions(self, request: web.Request, body: Body) -> web.StreamResponse:
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "'prompt' must be a string or a list of strings", "prompt")
        count = len(prompts) * positive_int(body, "n", 1, 128)
        pieces, cut = plan(body, self.behavior.reply)
        finish = "length" if cut else "stop"
        usage = None if self.behavior.omit_usage else usage_counts(sum(map(words, prompts)), count, pieces)
        base = {"id": new_id("cmpl-sim-"), "object": "text_completion", "created": int(time.time())}
        base |= {"model": body["model"]}

        def choices(text: str, finish_reason: str | None = None) -> list[Body]:
            return [{"text": text, "index": i, "logprobs": None, "finish_reason": finish_reason} for i in range(count)]

        if not body.get("stream"):
            result = {**base, "choices": choices("".join(pieces), finish), "usage": usage}
            return await self._reply(request, result, len(pieces))
        steps = (choices(p) for p in pieces)
        frames = openai_frames(base, [], steps, choices("", finish), streamed_usage(body, usage))
        return await self._stream(request, frames)

    async def _embeddings(self, request: web.Request, body: Body) -> web.StreamResponse:
        inputs = embedding_inputs(body.get("input"))
        dims = positive_int(body, "dimensions", 8, 8192)
        as_base64 = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                tokens, key = tokens + len(item.split()), item.encode()
            else:
                tokens, key = tokens + len(item), orjson.dumps(item)
            vector = unit_vector(key, dims)
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
        pieces, cut = plan(body, self.behavior.reply)
        stop = {"stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None}
        prompt = messages_tokens(body.get("messages")) + words(body.get("system"))
        usage = None if self.behavior.omit_usage else {"input_tokens": prompt, "output_tokens": len(pieces)}
        message = {"id": new_id("msg_sim_"), "type": "message", "role": "assistant", "model": body["model"]}
        if not body.get("stream"):
            content = [{"type": "text", "text": "".join(pieces)}]
            return await self._reply(request, {**message, "content": content, **stop, "usage": usage}, len(pieces))
        message |= {"content": [], "stop_reason": None, "stop_sequence": None}
        end: Body = {"delta": stop}
        if usage is not None:
            message["usage"], end["usage"] = {**usage, "output_tokens": 1}, {"output_tokens": len(pieces)}

        def frames() -> Frames:
            block = {"type": "text", "text": ""}
            start = anthropic_event("message_start", message=message)
            yield start + anthropic_event("content_block_start", index=0, content_block=block), False
            for piece in pieces:
                yield anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece}), True
            stop_block = anthropic_event("content_block_stop", index=0)
            yield stop_block + anthropic_event("message_delta", **end) + anthropic_event("message_stop"), False

        return await self._stream(request, frames())

    # -- control -----------------------------------------------------------------------------

    async def _set_behavior(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of SimBehavior fields")
            self.behavior.update(changes)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            return ApiError(400, str(exc)).response()
        return json_response(dataclasses.asdict(self.behavior))

    async def _stats(self, request: web.Request) -> web.Response:
        return json_response({**self.stats, "name": self.name, "behavior": dataclasses.asdict(self.behavior)})

    async def _last_request(self, request: web.Request) -> web.Response:
        return json_response({"body": self.last_request, "headers": self.last_headers})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"reset": True})


async def start_sim(backend: SimBackend, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``backend`` on host:port (0 picks a free port); stop it with ``await runner.cleanup()``."""
    runner = web.AppRunner(backend.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]
