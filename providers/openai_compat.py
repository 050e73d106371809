"""Native passthrough to any OpenAI-compatible server over pooled keep-alive connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from providers.base import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUTS,
    BackendInfo,
    Limits,
    ProviderError,
    Timeouts,
    UpstreamRequest,
    UpstreamResponse,
)
from providers.http1 import HttpError, LocalError, Pool, Response, TooLarge

_JSON = "application/json"
_SSE = "text/event-stream"
_DRAIN_S = 0.05  # how long a finished stream may take to end its body before its connection is dropped
_DRAIN_BYTES = 64 * 1024  # and how much it may still send: only the body's end is due after [DONE]
_RESULT = {"chat/completions": "choices", "completions": "choices", "embeddings": "data"}  # a 200's list
# An error answer is read for its message only: a little of it, briefly.
_ERROR_BODY_BYTES = 64 * 1024
_ERROR_BODY_S = 1.0


class OpenAICompatProvider:
    def __init__(
        self,
        info: BackendInfo,
        base_url: str,
        api_key: str | None = None,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.info = info
        # identity: compressing a small JSON answer costs both ends more than sending it
        headers = {"content-type": _JSON, "accept-encoding": "identity"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._pool = Pool(base_url, headers, timeouts=timeouts, limits=limits)
        self._heads = {
            (endpoint, stream): self._pool.head(endpoint, {"accept": _SSE if stream else _JSON})
            for endpoint in ("chat/completions", "completions", "embeddings")
            for stream in (False, True)
        }
        self._total = timeouts.total
        self._first_token = timeouts.first_token
        self._idle = timeouts.idle
        self._max_event = limits.max_event_bytes

    async def _post(self, request: UpstreamRequest, *, stream: bool) -> Response:
        body = request.raw if request.raw is not None else orjson.dumps(request.payload)
        try:
            resp = await self._pool.post(
                self._heads[request.endpoint, stream], body, self._first_token if stream else self._total
            )
        except TimeoutError:
            setting = "timeouts.first_token" if stream else "timeouts.total"
            raise ProviderError("timeout", f"{self.info.name}: no response within {setting}") from None
        except HttpError as exc:
            raise ProviderError("connect", f"{self.info.name}: {exc}") from None
        except LocalError as exc:
            raise ProviderError("local", f"{self.info.name}: {exc}") from None
        if resp.status >= 300:
            try:
                err = await resp.read(_ERROR_BODY_S, limit=_ERROR_BODY_BYTES)
            except (TimeoutError, HttpError):
                err = b""  # too slow or too large to be a message worth relaying
            finally:
                resp.release()
            raise ProviderError(
                "status",
                f"{self.info.name}: upstream answered HTTP {resp.status}",
                status=resp.status if resp.status >= 400 else 502,
                body=err,
                retry_after=_retry_after(resp.headers.get("retry-after")),
            )
        return resp

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        loop_time = asyncio.get_running_loop().time
        end = loop_time() + self._total
        resp = await self._post(request, stream=False)
        try:
            body = await resp.read(max(0.0, end - loop_time()))  # the whole answer within total
        except TimeoutError:
            raise ProviderError(
                "timeout", f"{self.info.name}: the answer took longer than {self._total:g} s (timeouts.total)"
            ) from None
        except TooLarge as exc:
            raise ProviderError("protocol", f"{self.info.name}: {exc} (max_response_bytes)") from None
        except HttpError as exc:
            raise ProviderError("connect", f"{self.info.name}: reading the answer failed: {exc}") from None
        finally:
            resp.release()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError("protocol", f"{self.info.name}: answered with invalid JSON") from None
        if not isinstance(data, dict) or "error" in data or not isinstance(data.get(_RESULT[request.endpoint]), list):
            raise ProviderError(
                "protocol", f"{self.info.name}: answered 200 without a result (no '{_RESULT[request.endpoint]}' list)"
            )
        return UpstreamResponse(body=body, data=data, headers=_power_header(resp))

    async def stream(self, request: UpstreamRequest) -> SSEStream:
        started = asyncio.get_running_loop().time()
        resp = await self._post(request, stream=True)
        return SSEStream(
            resp,
            self.info.name,
            first_due=started + self._first_token,
            idle=self._idle,
            end=started + self._total,
            max_event=self._max_event,
        )

    async def close(self) -> None:
        await self._pool.close()


class SSEStream:
    """Server-sent events from an HTTP response: yields each event's data payload. Deadlines, on
    the loop's clock and checked on every read: the first event, each next one (``idle``), and
    the whole answer (``end``); bytes that make no event (comments, a line that never ends) do
    not put them off. An event may be at most ``max_event`` bytes."""

    def __init__(
        self, resp: Response, backend: str, *, first_due: float, idle: float, end: float, max_event: int
    ) -> None:
        self._resp = resp
        self._backend = backend
        self._first_due = first_due
        self._idle = idle
        self._end = end
        self._split = _Splitter(max_event)
        self.headers = _power_header(resp)
        # One generator for the stream's life: it holds bytes read past the last event.
        self._iter = self._events()
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter

    async def _events(self) -> AsyncGenerator[bytes, None]:
        # Reads whatever has arrived and splits it into events, rather than awaiting line by
        # line: one await (and one timer) per network read instead of two per event.
        loop_time = asyncio.get_running_loop().time
        due = min(self._first_due, self._end)
        seen = False  # an event has come
        while True:
            chunk = await self._read(due - loop_time(), seen, due)
            if not chunk:
                # End of body without [DONE]: the relay judges from finish_reason whether it was cut.
                payload = _data_of(self._split.rest())
                if payload and payload != b"[DONE]":
                    yield payload
                return
            fresh = False
            began = loop_time()
            for event in self._split.feed(chunk, self._backend):
                payload = _data_of(event)
                if payload is None:
                    continue  # a comment or an event without data
                if payload == b"[DONE]":
                    self._done = True
                    return
                fresh = True
                yield payload
            if fresh:
                seen = True
                now = loop_time()
                # The time the consumer held the events (a client reading slowly) was not the
                # backend's: its total runs on without it, or a slow reader would fail and eject a
                # healthy backend. The relay's own deadline bounds the client (router.http.events).
                self._end += now - began
                due = min(now + self._idle, self._end)

    async def _read(self, within: float, seen: bool, due: float) -> bytes:
        if within <= 0:  # bytes kept coming, each in time, and made no event before the deadline
            raise ProviderError("timeout", self._late(seen, due))
        try:
            return await self._resp.readany(within)
        except TimeoutError:
            raise ProviderError("timeout", self._late(seen, due)) from None
        except HttpError as exc:
            raise ProviderError("connect", f"{self._backend}: stream broken: {exc}") from None

    def _late(self, seen: bool, due: float) -> str:
        if due >= self._end:
            return f"{self._backend}: the answer took longer than its time limit (timeouts.total)"
        if seen:
            return f"{self._backend}: stream stalled: no event for {self._idle:g} s (timeouts.idle)"
        return f"{self._backend}: no first event within its time limit (timeouts.first_token)"

    async def aclose(self) -> None:
        if not self._done:
            # close() rather than release(): an unfinished stream's connection cannot be reused.
            # Closed first, so that a read in flight elsewhere (a cancelled hedge) ends at once.
            self._resp.close()
            with contextlib.suppress(RuntimeError):  # the generator is still running in that task
                await self._iter.aclose()
            return
        if not self._resp.closed:
            # A finished stream's connection goes back to the pool once its body's end (the last,
            # empty chunk) is read: a new connection per stream costs about a millisecond.
            try:
                await self._resp.read(_DRAIN_S, limit=_DRAIN_BYTES)
            except (TimeoutError, HttpError):
                self._resp.close()
            else:
                self._resp.release()


class _Splitter:
    """A body cut into server-sent events, whatever its reads. The unfinished event is kept in one
    growing buffer searched only where new bytes came, so a line that never ends costs linear
    time, and it may hold at most ``cap`` bytes."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._buf = bytearray()
        self._skip_lf = False  # the last read ended in CR: an LF starting the next one ends the same line

    def feed(self, chunk: bytes, backend: str) -> list[bytes]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            # CRLF, LF and CR all end a line (the SSE spec); a CR that ends a read may be the
            # first half of a CRLF split across two reads.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf: bytes | bytearray = chunk
        scan = 0
        if self._buf:
            scan = len(self._buf) - 1  # searched already, but for a "\n" that the chunk's may complete
            self._buf += chunk
            buf = self._buf
        events = []
        start = 0
        while (at := buf.find(b"\n\n", scan)) >= 0:
            if at - start > self._cap:
                break
            events.append(bytes(buf[start:at]))
            start = scan = at + 2
        if len(buf) - start > self._cap + 1:  # + 1: the first of the two line ends may be in already
            raise ProviderError("protocol", f"{backend}: an event larger than {self._cap} bytes (max_event_bytes)")
        if buf is self._buf:
            del self._buf[:start]  # O(1): a bytearray drops its front without moving the rest
        elif start < len(buf):
            self._buf = bytearray(buf[start:])
        return events

    def rest(self) -> bytes:
        return bytes(self._buf)


def _data_of(event: bytes) -> bytes | None:
    """The data of one server-sent event (its data lines joined), or None if it has none."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _power_header(resp: Response) -> dict[str, str]:
    power = resp.headers.get("x-power-watts")
    return {"x-power-watts": power} if power is not None else {}
