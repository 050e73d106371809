"""Relaying an upstream stream to the client as OpenAI's server-sent events, and billing it.

Events pass through as the backend framed them, except the usage chunk: it is held back until
the usage record is durable, and dropped if the client did not ask for one. Once the first byte
has gone out the backend can no longer change, so a failure ends the stream with one error event.

The first event is checked (``StreamRelay.begin``) while dispatch can still fall back, and the
server may write it with the head at that moment (an ``EarlyWrite``), before dispatch unwinds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from providers.base import ProviderError
from router.errors import error_body
from router.fleet.backend_stats import StatsBook
from router.ledger.base import Ledger, Outcome, UsageRecord
from router.metrics import Metrics
from router.pipeline.dispatch import Attempts, Opened
from router.pipeline.metering import RequestContext, billed_tokens, build_record, observe
from router.pipeline.tokens import TokenCounter

DONE = b"data: [DONE]\n\n"

# Writes an event stream's head (200, these headers) and its first event in one go, without
# waiting: the transport buffers what the client has not read yet.
EarlyWrite = Callable[[list[tuple[bytes, bytes]], bytes], None]


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class StreamRelay:
    """Made while the backend computes its first token, begun (``begin``) once it has come."""

    __slots__ = (
        "_attempts",
        "_client_usage",
        "_ctx",
        "_finished",
        "_first",
        "_last",
        "_ledger",
        "_metrics",
        "_opened",
        "_prompt_tokens",
        "_release",
        "_settle",
        "_started",
        "_stats",
        "_text",
        "_tokens",
        "_usage",
    )

    def __init__(
        self,
        ctx: RequestContext,
        attempts: Attempts,
        *,
        client_usage: bool,
        prompt_tokens: Callable[[], int],
        ledger: Ledger,
        stats: StatsBook,
        metrics: Metrics,
        tokens: TokenCounter,
        release: Callable[[str], None],
        settle: Callable[[UsageRecord | None], Awaitable[None]] | None = None,
    ) -> None:
        self._ctx = ctx
        self._opened: Opened | None = None
        self._attempts = attempts
        self._client_usage = client_usage
        self._prompt_tokens = prompt_tokens
        self._ledger = ledger
        self._stats = stats
        self._metrics = metrics
        self._tokens = tokens
        self._release = release
        self._settle = settle  # gives the request's budget reservation back, at its real cost
        self._started = False
        self._usage: dict[str, Any] | None = None
        self._text: list[str] = []
        self._finished = False
        self._last: dict[str, Any] | None = None
        self._first: bytes | None = None  # the first event as the client gets it

    def begin(self, opened: Opened) -> bytes | None:
        """The stream whose first event has come, from the backend that answers: that event as
        the client gets it (None if held back). Raises ``ProviderError``, and stays unbegun, if
        the event is not one; nothing has reached the client then, so another backend can answer."""
        self._first = self._take(opened.first)
        self._opened = opened
        return self._first

    @property
    def begun(self) -> bool:
        return self._opened is not None

    @property
    def opened(self) -> Opened:
        assert self._opened is not None, "a relay is begun before its events are read"
        return self._opened

    async def events(self, first_written: bool = False) -> AsyncGenerator[bytes, None]:
        """The events to relay; ``first_written``: the first went out with the head already."""
        opened = self.opened
        name = opened.scored.candidate.info.name
        outcome: Outcome = "client_disconnected"
        record: UsageRecord | None = None
        self._started = True
        try:
            if self._first is not None and not first_written:
                yield self._first
            async for payload in opened.stream:
                out = self._take(payload)
                if out is not None:
                    yield out
            if not self._finished:
                raise ProviderError("protocol", f"{name}: stream ended before it finished")
            outcome = "ok"
            record = self._record(outcome)
            await self._ledger.submit(record)  # durable before the client sees the end
            if self._client_usage:
                yield frame(self._usage_chunk(record))
            yield DONE
        except ProviderError as exc:
            outcome = "upstream_error"
            await self._stats.failure(name, self._ctx.model)
            self._metrics.attempt(name, exc.kind)
            yield frame(
                error_body(
                    f"The backend failed mid-stream: {exc.message}", "server_error", None, "upstream_stream_error"
                )
            )
        except asyncio.CancelledError:
            outcome = "client_disconnected"
            raise
        finally:
            await self._end(outcome, record)

    async def abandon(self, outcome: Outcome = "client_disconnected") -> None:
        """End a begun relay whose events were never read: the client left before they were, or
        the request failed after its first event was taken."""
        if not self._started:
            self._started = True
            await self._end(outcome, None)

    async def _end(self, outcome: Outcome, record: UsageRecord | None) -> None:
        opened = self.opened
        name = opened.scored.candidate.info.name
        try:
            await opened.stream.aclose()
        finally:
            # Whatever fails below, the backend's slot and the request's reservation go back.
            self._release(name)
            try:
                if record is None:
                    record = self._record(outcome)
                    self._ledger.submit(record)  # queued now; the writer makes it durable
                elif outcome == "ok":
                    generation = time.perf_counter() - opened.opened_at
                    ttft = opened.opened_at - self._ctx.started
                    self._stats.success(name, self._ctx.model, ttft, record.output_tokens, generation)
                observe(self._metrics, record)
            finally:
                if self._settle is not None:
                    await self._settle(record)

    def _take(self, payload: bytes) -> bytes | None:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ProviderError("protocol", "backend sent an event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise ProviderError("protocol", "backend sent an event that is not a JSON object")
        if "error" in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise ProviderError("status", f"backend reported an error: {msg}", status=502)
        self._last = chunk
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if usage and not choices:
            self._usage = usage  # the usage chunk: held back (see events)
            return None
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    raise ProviderError("protocol", "backend sent a choice that is not a JSON object")
                self._collect(choice)
        if usage:
            # Usage on a chunk with choices: billed from, and kept off the client's chunk, which
            # gets one usage chunk of its own at the end, if it asked for one.
            self._usage = usage
            payload = orjson.dumps({k: v for k, v in chunk.items() if k != "usage"})
        return frame(payload)

    def _collect(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self._finished = True
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text is None and "text" in choice:
            text = choice["text"]
        if isinstance(text, str) and text:
            self._text.append(text)
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    self._text.extend(s for s in (fn.get("name"), fn.get("arguments")) if isinstance(s, str))

    def _record(self, outcome: Outcome) -> UsageRecord:
        tokens_in, tokens_out, source = billed_tokens(
            self._usage, self._prompt_tokens, lambda: self._tokens.count("".join(self._text))
        )
        ttft = self.opened.opened_at - self._ctx.started
        return build_record(
            self._ctx,
            self.opened.scored,
            tokens_in,
            tokens_out,
            outcome,
            source,
            self._attempts.count,
            ttft,
            attempt=self._attempts.answered or None,
        )

    def _usage_chunk(self, rec: UsageRecord) -> bytes:
        last = self._last or {}
        usage = dict(self._usage) if self._usage and rec.tokens_source == "upstream" else {}
        usage.update(
            prompt_tokens=rec.input_tokens,
            completion_tokens=rec.output_tokens,
            total_tokens=rec.input_tokens + rec.output_tokens,
        )
        return orjson.dumps(
            {
                "id": last.get("id", "chatcmpl-" + self._ctx.request_id),
                "object": last.get("object", "chat.completion.chunk"),
                "created": last.get("created", int(self._ctx.received_ts)),
                "model": last.get("model", self._ctx.model),
                "choices": [],
                "usage": usage,
            }
        )


def stream_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """An event stream's response headers, ``headers`` included."""
    return [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        *((k.encode(), v.encode()) for k, v in headers.items()),
    ]
