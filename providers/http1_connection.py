"""One keep-alive connection of the upstream client, and what it will hold of a backend's answer.

The backend at the other end may be a stranger's node, so nothing it sends is trusted to be small
or well-timed: the answer's head is bounded in bytes and in header count (as the gateway's own
server bounds a client's), bytes no request asked for make the connection unusable, and body
bytes stop being read once about a megabyte waits unread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools

from providers.flow_control import FlowControl
from providers.ticker import Ticker

_HIGH_WATER = 1 << 20  # buffered body bytes at which the socket stops being read
_LOW_WATER = 1 << 18
MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers, as the server side allows a request
MAX_HEADERS = 100


class HttpError(Exception):
    """The exchange failed below HTTP: no connection, a reset, or an answer that is not HTTP
    (or one larger than the gateway holds). It is the backend's failure."""


class _Stop(Exception):
    """Raised in a parser callback to stop the parser: data_received then drops the connection."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gone: Callable[[Connection], None], ticker: Ticker) -> None:
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
        self.head_read = 0  # bytes read before the answer's headers ended, interim answers included
        self.header_bytes = 0
        self.status = 0
        self.headers_done = False
        self.interim = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.lost = False
        self.received = False
        self.sent = False  # some of the request may have reached the backend
        self.expecting = False  # an exchange is under way and its answer has not ended
        self.stray = False  # bytes came that no request asked for
        self.idle_since = 0.0

    def reset(self) -> None:
        """Ready for the next exchange, with a parser of its own: nothing of the last one carries over."""
        self.parser = httptools.HttpResponseParser(self)
        self.chunks.clear()
        self.buffered = self.head_read = self.header_bytes = self.status = 0
        self.header_list = []
        self.headers_done = self.complete = self.received = self.interim = self.sent = False
        self.expecting = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's transport is a Transport

    def data_received(self, data: bytes) -> None:
        if not self.expecting:
            self._strayed()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # the latter is no HttpParserError
            if self.stray:
                self._strayed()
                return
            self.fail(HttpError(f"the backend's answer is not valid HTTP/1.1: {exc}"))
            self.close()
            return
        if not self.headers_done:
            # A head that never ends (one endless header, interim answers for ever) is bounded here.
            self.head_read += len(data)
            if self.head_read > MAX_HEAD_BYTES:
                self.fail(HttpError(f"the backend's answer has a head over {MAX_HEAD_BYTES // 1024} KB"))
                self.close()

    def _strayed(self) -> None:
        self.stray = True
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

    def on_message_begin(self) -> None:
        if not self.expecting:  # a second answer after this one's end, in the same read
            self.stray = True
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if len(self.header_list) >= MAX_HEADERS or self.header_bytes > MAX_HEAD_BYTES:
            self.fail(
                HttpError(f"the backend's answer has over {MAX_HEADERS} headers or {MAX_HEAD_BYTES // 1024} KB of them")
            )
            raise _Stop
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
        self.expecting = False
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
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError())

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    async def send(self, data: bytes, body: bytes, within: float | None) -> None:
        """Write the request; a backend that stops reading it fails the wait after ``within`` s.
        ``sent`` stays False only if not a byte of it can have left (the write itself failed)."""
        assert self.transport is not None
        try:
            if self.transport.is_closing():
                raise HttpError("the connection was closed before the request was written")
            if len(body) < 65536:
                self.transport.write(data + body)
            else:
                self.transport.writelines((data, body))
        except (RuntimeError, OSError) as exc:  # uvloop: "the handler is closed"
            raise HttpError(f"the request could not be written: {exc}") from None
        self.sent = True
        await self.flow.drain(within)

    def usable(self, now: float, keepalive_s: float) -> bool:
        return (
            not self.lost
            and not self.stray
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < keepalive_s
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
