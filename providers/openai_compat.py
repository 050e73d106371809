"""Native passthrough to any OpenAI-compatible server over one pooled aiohttp session."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
import orjson

from providers.base import BackendInfo, ProviderError, UpstreamRequest, UpstreamResponse

_JSON = "application/json"
_DRAIN_S = 0.05  # how long a finished stream may take to end its body before its connection is dropped


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
        self._base = base_url.rstrip("/")
        self._headers = {"content-type": _JSON, "accept": _JSON}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._first_token = first_token_timeout
        self._idle = idle_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use because an aiohttp session belongs to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _post(self, request: UpstreamRequest, *, stream: bool) -> aiohttp.ClientResponse:
        body = request.raw if request.raw is not None else orjson.dumps(request.payload)
        headers = {"accept": "text/event-stream"} if stream else None
        try:
            async with asyncio.timeout(self._first_token if stream else None):
                resp = await self._client().post(f"{self._base}/{request.endpoint}", data=body, headers=headers)
        except TimeoutError:
            raise ProviderError("timeout", f"{self.info.name}: no response within the time limit") from None
        except aiohttp.ClientConnectionError as exc:
            raise ProviderError("connect", f"{self.info.name}: connection failed: {exc}") from None
        if resp.status >= 400:
            try:
                err = await resp.read()
            except aiohttp.ClientError:
                err = b""
            finally:
                resp.release()
            raise ProviderError(
                "status",
                f"{self.info.name}: upstream answered HTTP {resp.status}",
                status=resp.status,
                body=err,
                retry_after=_retry_after(resp.headers.get("retry-after")),
            )
        return resp

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        resp = await self._post(request, stream=False)
        try:
            body = await resp.read()
        except TimeoutError:
            raise ProviderError("timeout", f"{self.info.name}: response timed out") from None
        except aiohttp.ClientError as exc:
            raise ProviderError("connect", f"{self.info.name}: connection lost: {exc}") from None
        finally:
            resp.release()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError("protocol", f"{self.info.name}: answered with invalid JSON") from None
        if not isinstance(data, dict) or "error" in data:
            raise ProviderError("protocol", f"{self.info.name}: answered 200 without a result")
        return UpstreamResponse(body=body, data=data, headers=_power_header(resp))

    async def stream(self, request: UpstreamRequest) -> SSEStream:
        resp = await self._post(request, stream=True)
        return SSEStream(resp, self.info.name, self._first_token, self._idle)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SSEStream:
    """Server-sent events from an aiohttp response: yields each event's data payload."""

    def __init__(self, resp: aiohttp.ClientResponse, backend: str, first_token: float, idle: float) -> None:
        self._resp = resp
        self._backend = backend
        self._first = first_token
        self._idle = idle
        self.headers = _power_header(resp)
        # One generator for the stream's life: it holds bytes read past the last event.
        self._iter = self._events()
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter

    async def _events(self) -> AsyncGenerator[bytes, None]:
        # Reads whatever has arrived and splits it into events, rather than awaiting line by
        # line: one await (and one timer) per network read instead of two per event.
        content = self._resp.content
        buf = b""
        limit = self._first
        while True:
            try:
                async with asyncio.timeout(limit):
                    chunk = await content.readany()
            except TimeoutError:
                raise ProviderError("timeout", f"{self._backend}: stream stalled") from None
            except aiohttp.ClientError as exc:
                raise ProviderError("connect", f"{self._backend}: stream broken: {exc}") from None
            if not chunk:
                # End of body without [DONE]: the relay judges from finish_reason whether it was cut.
                payload = _data_of(buf)
                if payload and payload != b"[DONE]":
                    yield payload
                return
            buf = buf + chunk if buf else chunk
            if b"\r" in chunk:
                buf = buf.replace(b"\r\n", b"\n")
            while (end := buf.find(b"\n\n")) >= 0:
                payload = _data_of(buf[:end])
                buf = buf[end + 2:]
                if payload is None:
                    continue  # a comment or an event without data
                if payload == b"[DONE]":
                    self._done = True
                    return
                limit = self._idle
                yield payload

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
                async with asyncio.timeout(_DRAIN_S):
                    await self._resp.content.read()
            except (TimeoutError, aiohttp.ClientError):
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


def _power_header(resp: aiohttp.ClientResponse) -> dict[str, str]:
    power = resp.headers.get("x-power-watts")
    return {"x-power-watts": power} if power is not None else {}

