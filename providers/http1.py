"""A lean HTTP/1.1 client for the request path: keep-alive connections to one origin, parsed by
httptools (llhttp).

aiohttp's client costs more per proxied request (URL objects, tracing hooks, cookie handling, a
timer context per phase) than the rest of the gateway's work together, and an OpenAI-compatible
backend needs none of it: POST a body, then read a JSON body or a stream of chunks back. This is
that and no more: one origin per pool, requests pipelined never, bodies as bytes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

from providers.flow_control import FlowControl
from providers.ticker import Ticker

_HIGH_WATER = 1 << 20  # buffered body bytes at which the socket stops being read
_LOW_WATER = 1 << 18


class HttpError(Exception):
    """The exchange failed below HTTP: no connection, a reset, or an answer that is not HTTP."""


class Origin:
    """Where a base URL points: scheme, host and port, and the path every request starts with."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = self.port == (443 if self.tls else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = name if default else f"{name}:{self.port}"
        self.path = parts.path.rstrip("/")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gone: Callable[[_Connection], None], ticker: Ticker) -> None:
        self.loop = loop
        self.gone = gone  # tells the pool this connection is closed
        self.ticker = ticker  # times the waits: one timer for every connection, not one per wait
        self.when = 0.0  # when the wait in progress times out, on the loop's clock
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.flow = FlowControl(loop)
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.header_list: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.headers_done = False
        self.interim = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.lost = False
        self.received = False
        self.idle_since = 0.0

    def reset(self) -> None:
        self.chunks.clear()
        self.buffered = 0
        self.header_list = []
        self.status = 0
        self.headers_done = self.complete = self.received = self.interim = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's transport is a Transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(HttpError(f"the backend's answer is not valid HTTP/1.1: {exc}"))
            self.close()

    def eof_received(self) -> None:
        return None  # close: a half-closed connection carries no further exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.gone(self)
        if not self.complete:
            if self.headers_done and exc is None and self._ends_at_close():
                # A body without length or chunking ends with the connection, closed cleanly:
                # a reset (exc) cuts it short.
                self.complete = True
            elif self.error is None:
                self.error = HttpError(f"connection closed by the backend{f': {exc}' if exc else ''}")
        self._wake()
        self.flow.connection_lost()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.interim = True
            self.header_list = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()

    # for the pool and the response

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _ends_at_close(self) -> bool:
        names = {name.lower() for name, _ in self.header_list}
        return b"content-length" not in names and b"transfer-encoding" not in names

    async def wait(self, within: float | None) -> None:
        """Until the next event on this connection (headers, body bytes, the end, an error)."""
        fut = self.waiter = self.loop.create_future()
        if within is not None:
            self.when = self.loop.time() + within
            self.ticker.arm(self)
        try:
            await fut
        finally:
            self.waiter = None
            if within is not None:
                self.ticker.disarm(self)

    def expire(self) -> None:
        """The wait in progress has lasted its ``within``."""
        if self.waiter is not None:
            _expire(self.waiter)

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    async def send(self, data: bytes, body: bytes, within: float | None) -> None:
        """Write the request; a backend that stops reading it fails the wait after ``within`` s."""
        assert self.transport is not None
        if len(body) < 65536:
            self.transport.write(data + body)
        else:
            self.transport.writelines((data, body))
        await self.flow.drain(within)

    def usable(self, now: float, keepalive_s: float) -> bool:
        return (
            not self.lost
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < keepalive_s
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Response:
    """An answer whose headers have arrived; its body is read with ``read`` or ``readany``.
    ``release`` hands the connection back for reuse once the body has been read to its end."""

    def __init__(self, pool: Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers: dict[str, str] = {}
        for name, value in conn.header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        self._decoder: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding != "identity":
            self.close()
            raise HttpError(f"the backend answered with an unsupported content-encoding {encoding!r}")

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def readany(self, within: float | None = None) -> bytes:
        """The body bytes that have arrived (waiting up to ``within`` s for some); b"" at its end."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.chunks:
                chunk = conn.take()
                if self._decoder is not None:
                    chunk = self._decode(chunk)
                    if not chunk:
                        continue
                return chunk
            if conn.complete:
                return self._decode(None) if self._decoder is not None else b""
            if conn.error is not None:
                raise conn.error
            await conn.wait(within)

    def _decode(self, chunk: bytes | None) -> bytes:
        """Decompressed body bytes (None: the end of the body)."""
        try:
            return self._decoder.decompress(chunk) if chunk is not None else self._decoder.flush()  # type: ignore[no-any-return]  # zlib's decompressobj: bytes
        except zlib.error as exc:
            self.close()
            raise HttpError(f"the backend's compressed body is corrupt: {exc}") from None

    async def read(self, within: float | None = None) -> bytes:
        """The whole body, within ``within`` s in all: a body that trickles in is no exception."""
        loop_time = asyncio.get_running_loop().time
        end = None if within is None else loop_time() + within
        parts = []
        while chunk := await self.readany(None if end is None else max(0.0, end - loop_time())):
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Back to the pool if the body was read to its end, else the connection is closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.complete and conn.keep_alive and conn.error is None and not conn.chunks:
            self._pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Keep-alive connections to one origin, most recently used first."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        connect_timeout: float = 5.0,
        keepalive_s: float = 30.0,
        max_idle: int = 512,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin(base_url)
        self._ticker = Ticker()  # the read timeouts of every connection of this pool
        self._ssl = (ssl_context or ssl.create_default_context()) if self.origin.tls else None
        self._static = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._connect_timeout = connect_timeout
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    def head(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        """The request line and headers up to Content-Length, built once per kind of request."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        return (
            f"POST {self.origin.path}/{path} HTTP/1.1\r\nhost: {self.origin.authority}\r\n"
            f"{self._static}{extra}content-length: "
        ).encode("latin-1")

    async def post(self, head: bytes, body: bytes, within: float | None) -> Response:
        """Send one request (``head`` from ``head()``) and wait up to ``within`` s for its headers."""
        data = head + str(len(body)).encode() + b"\r\n\r\n"
        conn = self._reuse()
        if conn is not None:
            try:
                return await self._exchange(conn, data, body, within)
            except HttpError:
                # A kept-alive connection the backend had already closed: nothing of this request
                # was read, so it is sent once more on a new connection (what browsers do).
                if conn.received:
                    raise
        return await self._exchange(await self._connect(), data, body, within)

    async def _exchange(self, conn: _Connection, data: bytes, body: bytes, within: float | None) -> Response:
        conn.reset()
        try:
            deadline = None if within is None else time.monotonic() + within
            await conn.send(data, body, within)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except BaseException:
            conn.close()
            raise
        return Response(self, conn)

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self._keepalive_s):
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._open.discard, self._ticker),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise HttpError(f"could not connect to {origin.authority} within {self._connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpError(f"could not connect to {origin.authority}: {exc}") from None
        self._open.add(conn)
        return conn

    def put(self, conn: _Connection) -> None:
        if len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # lets the transports run their connection_lost
