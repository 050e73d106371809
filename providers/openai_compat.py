"""Native passthrough to any OpenAI-compatible server over pooled keep-alive connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from providers.base import BackendInfo, ProviderError, UpstreamRequest, UpstreamResponse
from providers.http1 import HttpError, Pool, Response

_JSON = "application/json"
_SSE = "text/event-stream"
_DRAIN_S = 0.05  # how long a finished stream may take to end its body before its connection is dropped
_RESULT = {"chat/completions": "choices", "completions": "choices", "embeddings": "data"}  # a 200's list


class OpenAICompatProvider:
    def __init__(
        self,
        info: BackendInfo,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = 5.0,
        first_token_timeout: float = 60.0,
        idle_timeout: float = 60.0,
        total_timeout: float = 600.0,
    ) -> None:
        self.info = info
        # identity: compressing a small JSON answer costs both ends more than sending it
        headers = {"content-type": _JSON, "accept-encoding": "identity"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._pool = Pool(base_url, headers, connect_timeout=connect_timeout)
        self._heads = {
            (endpoint, stream): self._pool.head(endpoint, {"accept": _SSE if stream else _JSON})
            for endpoint in ("chat/completions", "completions", "embeddings")
            for stream in (False, True)
        }
        self._total = total_timeout
        self._first_token = first_token_timeout
        self._idle = idle_timeout

    async def _post(self, request: UpstreamRequest, *, stream: bool) -> Response:
        body = request.raw if request.raw is not None else orjson.dumps(request.payload)
        try:
            resp = await self._pool.post(
                self._heads[request.endpoint, stream], body, self._first_token if stream else self._total
            )
        except TimeoutError:
            raise ProviderError("timeout", f"{self.info.name}: no response within the time limit") from None
        except HttpError as exc:
            raise ProviderError("connect", f"{self.info.name}: {exc}") from None
        if resp.status >= 300:
            try:
                err = await resp.read(_DRAIN_S * 20)
            except (TimeoutError, HttpError):
                err = b""
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
            resp, self.info.name, first_due=started + self._first_token, idle=self._idle, end=started + self._total
        )

    async def close(self) -> None:
        await self._pool.close()


class SSEStream:
    """Server-sent events from an HTTP response: yields each event's data payload. Deadlines, on
    the loop's clock: the first event, each next one (``idle``), and the whole answer (``end``);
    bytes that make no event (comments, a line that never ends) do not put them off."""

    def __init__(self, resp: Response, backend: str, *, first_due: float, idle: float, end: float) -> None:
        self._resp = resp
        self._backend = backend
        self._first_due = first_due
        self._idle = idle
        self._end = end
        self.headers = _power_header(resp)
        # One generator for the stream's life: it holds bytes read past the last event.
        self._iter = self._events()
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter

    async def _events(self) -> AsyncGenerator[bytes, None]:
        # Reads whatever has arrived and splits it into events, rather than awaiting line by
        # line: one await (and one timer) per network read instead of two per event.
        resp = self._resp
        loop_time = asyncio.get_running_loop().time
        due = min(self._first_due, self._end)
        seen = False  # an event has come
        buf = b""
        skip_lf = False  # the last chunk ended in CR: an LF starting the next one ends the same line
        while True:
            try:
                chunk = await resp.readany(max(0.0, due - loop_time()))
            except TimeoutError:
                raise ProviderError("timeout", self._late(seen, due)) from None
            except HttpError as exc:
                raise ProviderError("connect", f"{self._backend}: stream broken: {exc}") from None
            if not chunk:
                # End of body without [DONE]: the relay judges from finish_reason whether it was cut.
                payload = _data_of(buf)
                if payload and payload != b"[DONE]":
                    yield payload
                return
            if skip_lf:
                skip_lf = False
                if chunk.startswith(b"\n"):
                    chunk = chunk[1:]
            if b"\r" in chunk:
                # CRLF, LF and CR all end a line (the SSE spec); a CR that ends a chunk may be
                # the first half of a CRLF split across two reads.
                skip_lf = chunk.endswith(b"\r")
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buf = buf + chunk if buf else chunk
            fresh = False
            while (at := buf.find(b"\n\n")) >= 0:
                payload = _data_of(buf[:at])
                buf = buf[at + 2 :]
                if payload is None:
                    continue  # a comment or an event without data
                if payload == b"[DONE]":
                    self._done = True
                    return
                fresh = True
                yield payload
            if fresh:
                seen = True
                due = min(loop_time() + self._idle, self._end)

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
                await self._resp.read(_DRAIN_S)
            except (TimeoutError, HttpError):
                self._resp.close()
            else:
                self._resp.release()


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
