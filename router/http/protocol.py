"""fedrouter's HTTP/1.1 connection protocol on httptools: parses requests under the head and
body limits, runs them one at a time in order (pipelining), and writes their answers.

A general ASGI server pays, on every request, for work the gateway does not need: a scope of a
dozen keys, URL unquoting, header validation, a message dict per send. On the three inference
routes that costs more than the gateway's own work, so the server (``router.http.server``) answers
them from the parsed request directly; every other route goes through the ASGI bridge.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

from providers.flow_control import FlowControl, WriteStalled
from router.errors import BodyTooLarge, GatewayError, InvalidRequest
from router.http.request import Request
from router.http.send import whole_answer
from router.http.shedding import turn_away

_MAX_HEAD = 64 * 1024  # request line and headers; the body has its own, configured, limit
_MAX_HEADERS = 100  # as Envoy: 64 KB of empty headers would be 16,000 of them, 1.5 MB held
# After a refusal, what the client still sends is read and dropped this long (and up to this
# much) before the connection closes: closing on unread bytes sends a reset, which can destroy
# the refusal before the client has read it.
_LINGER_S, _LINGER_BYTES = 2.0, 16 * 1024 * 1024
# Requests queued on one connection: httptools parses a whole read at once, so without a bound
# one 256 KB read of tiny requests queued 14,500 of them (ten times the bytes in memory).
_MAX_PIPELINED = 32


class _HeadTooLarge(Exception):
    pass


class _BodyTooLarge(Exception):
    """A Content-Length over the limit: refused at once, rather than after the whole body."""


class _Pipelined(Exception):
    """More requests queued on one connection than ``_MAX_PIPELINED``: the rest are refused."""


class _OldVersion(Exception):
    """HTTP/0.9 (no head to carry a status) or 2.0 (no text form): refused, never answered as 1.x."""


class Host(Protocol):
    """What a connection needs of the server that accepted it (``router.http.server.Server``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def now(self) -> float: ...
    @property
    def connections(self) -> set[Connection]: ...
    @property
    def max_connections(self) -> int: ...

    turned_away: int  # connections over the cap still lingering (``router.http.shedding.turn_away``)

    @property
    def max_body(self) -> int: ...
    @property
    def head_timeout_s(self) -> float: ...
    @property
    def body_timeout_s(self) -> float: ...
    @property
    def write_stall_s(self) -> float | None: ...
    @property
    def status_line(self) -> Callable[[int], bytes]: ...
    def new_request_id(self) -> str: ...
    def log_fault(self, request: Request) -> None: ...
    async def dispatch(self, conn: Connection, request: Request) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time, writes their answers."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.gone: asyncio.Future[None] = self.loop.create_future()  # resolved when the client leaves
        self.flow = FlowControl(self.loop)
        self.reading = True
        self.active = server.now  # when a request last began, sent a byte or was answered, to the second
        self.head_size = 0
        self.refusal: GatewayError | None = None  # owed once the answers before it are written
        self.lingering = 0  # bytes still to drop after a refusal, before closing
        self.answering: asyncio.Task[None] | None = None  # the request being answered, until its answer begins
        # The request being read: since when its head (then its body) has been coming, for the
        # server's read deadlines, and its raw bytes, whitespace and chunk framing included,
        # which the parser's callbacks do not show.
        self.in_message = False
        self.in_head = False
        self.since = 0.0
        self.raw = 0
        self.owe_continue = False  # a 100 Continue for the request being read, once its turn comes
        self.fresh = False  # the request being read began in this read, at its first byte

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's transport is a Transport
        if len(self.server.connections) >= self.server.max_connections:
            self.reading = False
            if turn_away(self.server, transport):  # type: ignore[arg-type]  # as above
                self.lingering = _LINGER_BYTES  # dropped meanwhile, so that the close resets nothing away
            return
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        # Only bytes of a request put off the idle close: blank lines between requests start none.
        if self.in_message:
            self.active = self.server.now
        if self.lingering:
            self.lingering -= len(data)
            if self.lingering <= 0 and self.transport is not None:
                self.transport.close()
            return
        if self.in_message and self._over(len(data)):
            return
        # A request that begins in a read that began between requests starts at its first byte,
        # so all of the read is its head's if the head is still unfinished at the end of it.
        self.fresh = not self.in_message
        self._feed(data)
        if self.fresh and self.in_head and self.refusal is None:
            self._over(len(data))

    def _over(self, n: int) -> bool:
        """Count ``n`` raw bytes of the request being read; refuse it if they are over its limit."""
        self.raw += n
        if self.raw <= (_MAX_HEAD if self.in_head else self.server.max_body + _MAX_HEAD):
            return False
        self._refuse(self._oversized())
        return True

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(_refusal(400, "Protocol upgrades are not supported."))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadTooLarge):
                self._refuse(_refusal(431, str(cause)))
            elif isinstance(cause, _BodyTooLarge):
                self._refuse(BodyTooLarge(str(cause)))
            elif isinstance(cause, _Pipelined):
                self._refuse(_refusal(503, str(cause), retry=True))
            elif isinstance(cause, _OldVersion):
                self._refuse(_refusal(505, str(cause)))
            else:
                self._refuse(_refusal(400, f"Malformed HTTP request: {exc}."))
        except httptools.HttpParserError as exc:
            self._refuse(_refusal(400, f"Malformed HTTP request: {exc}."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.answering is not None:
            self.answering.cancel()  # the client left before its answer: see Server._inference
        self.server.connections.discard(self)
        if not self.gone.done():
            self.gone.set_result(None)
        self.flow.connection_lost()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.size = 0
        self.head_size = 0
        self.in_message = self.in_head = True
        self.since = self.active = self.server.now
        self.raw = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > _MAX_HEAD or len(self.headers) > _MAX_HEADERS:
            # Raised through the parser, so data_received refuses the request (status 431).
            raise _HeadTooLarge(f"The request line and headers exceed {_MAX_HEAD} bytes or {_MAX_HEADERS} headers.")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.since = self.server.now  # the body's deadline runs from here
        if (version := self.parser.get_http_version()) not in ("1.0", "1.1"):
            raise _OldVersion(f"HTTP/{version} is not supported.")
        max_body = self.server.max_body
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > max_body:
                # Nothing of it is read: the 413 goes out at once (after the answers owed to
                # earlier requests), and the connection closes. No 100 Continue invites it.
                raise _BodyTooLarge(f"Request body exceeds the limit of {max_body} bytes.")
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue" and self.parser.get_http_version() != "1.0":
                # curl, among others, waits a second for this before sending a body over 1 KB.
                # Only to the request being read: written while an earlier answer is going out,
                # it would land inside that answer. That one's end sends it (see _run).
                self.owe_continue = True
                self._continue()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.max_body:  # a chunked body, whose size shows only as it comes
            self.body = []
            raise _BodyTooLarge(f"Request body exceeds the limit of {self.server.max_body} bytes.")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = self.owe_continue = self.fresh = False
        if self.parser.should_upgrade():
            return  # refused, not served: the parser stops here and data_received refuses it
        if len(self.pending) >= _MAX_PIPELINED:
            raise _Pipelined(f"Over {_MAX_PIPELINED} pipelined requests; send the rest on a new connection.")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pending.append(
            Request(
                self.parser.get_method(),
                self.url,
                self.headers,
                body,
                self.parser.should_keep_alive(),
                self.parser.get_http_version() != "1.0",
            )
        )
        self.body = []
        if self.task is None:
            self._next()
        elif self.reading and self.transport is not None:
            self.reading = False  # a pipelining client waits until the answers in hand are written
            self.transport.pause_reading()

    # running requests

    def _next(self) -> None:
        request = self.pending.popleft()
        self.task = self.loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            await self.server.dispatch(self, request)
        except asyncio.CancelledError:
            pass  # the server is stopping
        except Exception:
            self.server.log_fault(request)
        if self.flow.paused and not self.lost:
            # Whole answers are written without waiting; a client that pipelines requests and
            # reads none of the answers would otherwise make them pile up here without bound.
            try:
                await self.flow.drain(self.server.write_stall_s)
            except WriteStalled:
                request.keep_alive = False
                self.abort()
        self.task = None
        self.active = self.server.now  # idle from the answer's end
        if self.lost or self.transport is None:
            return
        if not request.keep_alive:
            self.transport.close()
            return
        self._continue()
        if self.pending:
            self._next()
        elif self.refusal is not None:
            self._send_refusal()
        elif not self.reading:
            self.reading = True
            self.since = self.server.now  # a request read in part before the pause gets its time afresh
            self.transport.resume_reading()

    def _continue(self) -> None:
        """The 100 Continue owed to the request being read, once no answer is owed before it."""
        if self.owe_continue and self.task is None and not self.pending and self.transport is not None:
            self.owe_continue = False
            self.since = self.server.now  # the body's deadline runs from the invitation
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _oversized(self) -> GatewayError:
        if self.in_head:
            return _refusal(431, f"The request line and headers exceed {_MAX_HEAD} bytes.")
        return BodyTooLarge(f"Request body exceeds the limit of {self.server.max_body} bytes.")

    def late(self, now: float) -> bool:
        """Refuse (408) a request whose head or body is taking longer than the server allows."""
        if not self.in_message or not self.reading or self.refusal is not None or self.owe_continue:
            return False  # (a client may wait for the 100 Continue before sending the body)
        allowed = self.server.head_timeout_s if self.in_head else self.server.body_timeout_s
        if now - self.since <= allowed:
            return False
        part = "headers" if self.in_head else "body"
        self._refuse(_refusal(408, f"The request {part} did not arrive within {allowed:g} s.", retry=True))
        return True

    def _refuse(self, err: GatewayError) -> None:
        """Refuse what cannot be parsed or is too large, after the answers owed to the requests
        before it (which may be mid-stream), then close."""
        self.refusal = err
        if self.reading and self.transport is not None:
            self.reading = False  # nothing after a parse error can be read
            self.transport.pause_reading()
        if self.task is None:
            self._send_refusal()

    def _send_refusal(self) -> None:
        err = self.refusal
        assert err is not None
        headers = [
            (b"content-type", b"application/json"),
            *((k.encode(), v.encode()) for k, v in err.response_headers().items()),
        ]
        self.write_answer(
            err.status, headers, err.body(), keep_alive=False, request_id=self.server.new_request_id().encode()
        )
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answer is all there is; then drain what is still coming
        self.lingering = _LINGER_BYTES
        self.reading = True
        transport.resume_reading()
        self.loop.call_later(_LINGER_S, transport.close)

    # writing

    def write_answer(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_alive: bool,
        request_id: bytes | None = None,
        http10: bool = False,
    ) -> None:
        """A whole answer in one write."""
        if self.lost or self.transport is None:
            return
        line = self.server.status_line(status)
        self.transport.write(
            whole_answer(line, headers, body, keep_alive=keep_alive, request_id=request_id, http10=http10)
        )

    def status_line(self, status: int) -> bytes:
        return self.server.status_line(status)

    def write_now(self, data: bytes) -> None:
        """Write without waiting: the transport buffers what the client has not read yet."""
        if not self.lost and self.transport is not None:
            self.transport.write(data)

    async def write(self, data: bytes) -> None:
        """Write, then wait while the client reads (``WriteStalled`` if it stops reading for too long)."""
        if self.lost or self.transport is None:
            raise ConnectionResetError("the client has gone")
        self.transport.write(data)
        await self.flow.drain(self.server.write_stall_s)

    def abort(self) -> None:
        """Drop the connection at once: what was sent of an answer cannot be completed."""
        if self.transport is not None:
            self.transport.abort()


def _refusal(status: int, message: str, *, retry: bool = False) -> InvalidRequest:
    err = InvalidRequest(message)
    err.status, err.should_retry = status, retry
    return err
