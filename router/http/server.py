"""fedrouter's HTTP/1.1 server: the inference routes answered straight from the protocol, every
other route through the ASGI app.

A general ASGI server pays, on every request, for work the gateway does not need: a scope of a
dozen keys, URL unquoting, header validation, a message dict per send, a middleware chain. On the
three inference routes that cost more than the gateway's own work (auth, scoring, dispatch,
metering), so they skip it: the body is buffered under the size limit as it arrives, the gateway
is called with what it needs, and a plain answer leaves in a single write. Admin, health, model
and dashboard routes keep the full FastAPI app, through a small ASGI bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http
import itertools
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, MutableMapping
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools
from starlette.responses import Response

from providers.base import Endpoint
from providers.flow_control import FlowControl
from router.errors import BodyTooLarge, GatewayError, InvalidRequest, error_body
from router.http.asgi import INFERENCE_ROUTES, GatewayApp, error_response
from router.http.shedding import LoadShedder
from router.pipeline.gateway import Gateway
from router.pipeline.streaming import EventStreamResponse, frame

log = logging.getLogger("fedrouter")

_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_MAX_HEAD = 64 * 1024  # request line and headers; the body has its own, configured, limit
# After a refusal, what the client still sends is read and dropped this long (and up to this
# much) before the connection closes: closing on unread bytes sends a reset, which can destroy
# the refusal before the client has read it.
_LINGER_S = 2.0
_LINGER_BYTES = 16 * 1024 * 1024
_SERVER_ERROR = error_body("The server had an error while processing your request.", "server_error")


class _HeadTooLarge(Exception):
    pass


class _BodyTooLarge(Exception):
    """A Content-Length over the limit: refused at once, rather than after the whole body."""


class _Request:
    __slots__ = ("body", "headers", "http11", "keep_alive", "method", "url")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http11: bool = True,
    ) -> None:
        self.http11 = http11
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time, writes their answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.pending: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.gone: asyncio.Future[None] = self.loop.create_future()  # resolved when the client leaves
        self.flow = FlowControl(self.loop)
        self.reading = True
        self.active = server.now  # when the client last sent something, to the second
        self.head_size = 0
        self.refusal: GatewayError | None = None  # owed once the answers before it are written
        self.lingering = 0  # bytes still to drop after a refusal, before closing
        self.answering: asyncio.Task[None] | None = None  # the request being answered, until its answer begins

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's transport is a Transport
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.active = self.server.now
        if self.lingering:
            self.lingering -= len(data)
            if self.lingering <= 0 and self.transport is not None:
                self.transport.close()
            return
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

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > _MAX_HEAD:
            # Raised through the parser, so data_received refuses the request (status 431).
            raise _HeadTooLarge(f"The request line and headers exceed {_MAX_HEAD} bytes.")

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.server.max_body:
                # Nothing of it is read: the 413 goes out at once (after the answers owed to
                # earlier requests), and the connection closes. No 100 Continue invites it.
                raise _BodyTooLarge(f"Request body exceeds the limit of {self.server.max_body} bytes.")
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue" and self.transport is not None:
                # curl, among others, waits a second for this before sending a body over 1 KB.
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.max_body:  # a chunked body, whose size shows only as it comes
            self.body = []
            raise _BodyTooLarge(f"Request body exceeds the limit of {self.server.max_body} bytes.")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # refused, not served: the parser stops here and data_received refuses it
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pending.append(
            _Request(
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

    async def _run(self, request: _Request) -> None:
        try:
            await self.server.dispatch(self, request)
        except asyncio.CancelledError:
            pass  # the server is stopping
        except Exception:
            log.exception("unhandled error serving %s", request.url.decode("latin-1"))
        self.task = None
        if self.lost or self.transport is None:
            return
        if not request.keep_alive:
            self.transport.close()
        elif self.pending:
            self._next()
        elif self.refusal is not None:
            self._send_refusal()
        elif not self.reading:
            self.reading = True
            self.transport.resume_reading()

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

    def write_answer(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | memoryview,
        *,
        keep_alive: bool,
        request_id: bytes | None = None,
    ) -> None:
        """A whole answer in one write."""
        if self.lost or self.transport is None:
            return
        parts: list[bytes | memoryview] = [self.server.status_line(status)]
        for name, value in headers:
            if name != b"content-length":
                parts += (name, b": ", value, b"\r\n")
        if request_id is not None:
            parts += (b"x-request-id: ", request_id, b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        self.transport.write(b"".join(parts))

    async def write(self, data: bytes) -> None:
        if self.lost or self.transport is None:
            raise ConnectionResetError("the client has gone")
        self.transport.write(data)
        await self.flow.drain()


class _StreamSend:
    """The ASGI ``send`` of an answer whose length is not known in advance: chunked encoding; the
    head waits for the first piece of body, so both leave in one write."""

    def __init__(self, conn: _Connection, request: _Request, request_id: bytes | None) -> None:
        self.conn = conn
        self.request = request
        self.request_id = request_id
        self.head: bytes | None = None
        self.chunked = True
        self.started = False
        self.ended = False

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.begin(message["status"], list(message.get("headers", ())))
        elif kind == "http.response.body":
            await self._body(message.get("body", b""), message.get("more_body", False))

    def early(self, headers: list[tuple[bytes, bytes]], first: bytes) -> None:
        """An event stream's head and first event, written at once (``router.pipeline.streaming.EarlyWrite``)."""
        self.begin(200, headers)
        out = self._framed(first, True)
        if not self.conn.lost and self.conn.transport is not None:
            self.conn.transport.write(out)

    async def chunk(self, body: bytes) -> None:
        await self._body(body, True)

    async def finish(self) -> None:
        await self._body(b"", False)

    def begin(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        names = {name.lower() for name, _ in headers}
        self.chunked = b"content-length" not in names and status not in (204, 304)
        if self.chunked and not self.request.http11:
            # HTTP/1.0 knows no chunks: the body runs to the end of the connection.
            self.chunked, self.request.keep_alive = False, False
        parts = [self.conn.server.status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if self.request_id is not None and b"x-request-id" not in names:
            parts += (b"x-request-id: ", self.request_id, b"\r\n")
        if self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.request.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        self.started = True

    async def _body(self, body: bytes, more: bool) -> None:
        if self.ended:
            return
        out = self._framed(body, more)
        if out:
            await self.conn.write(out)

    def _framed(self, body: bytes, more: bool) -> bytes:
        """``body`` as it goes on the wire, after the head if that has not gone yet."""
        out = self.head or b""
        self.head = None
        if self.request.method == b"HEAD":
            body = b""
        if self.chunked:
            if body:
                out += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += body
        self.ended = not more
        return out


class Server:
    """Serves one GatewayApp on a listening socket until ``stop``; runs the app's lifespan."""

    def __init__(self, app: GatewayApp, *, grace_s: float = 10.0, idle_s: float = 30.0) -> None:
        self.app = app
        self.idle_s = idle_s  # a connection with no request in flight is closed after this long silent
        self.now = 0.0
        self.gateway: Gateway = app.state.gateway
        self.max_body: int = app.state.config.limits.max_body_bytes
        limit = app.state.config.limits.max_concurrency
        self.shedder = LoadShedder(app, limit) if limit is not None else None
        self.grace_s = grace_s
        self.connections: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # the serving loop, set by serve()
        self._prefix = "req_" + secrets.token_hex(8)  # unique across replicas without a call per request
        self._seq = itertools.count(1)
        self._status: dict[int, bytes] = {}
        self._date = b""
        self._stopping: asyncio.Event | None = None
        self.started = False

    def status_line(self, status: int) -> bytes:
        line = self._status.get(status)
        if line is None:
            line = self._status[status] = b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))
        return line + self._date

    def _tick(self) -> None:
        # Once a second rather than per request: the date header, and closing idle connections
        # (kept-alive ones, and any that never finish sending a request).
        self._date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        self.now = now = self.loop.time()
        for conn in list(self.connections):
            if conn.task is None and now - conn.active > self.idle_s and conn.transport is not None:
                conn.transport.close()
        self._timer = self.loop.call_later(min(1.0, self.idle_s / 2), self._tick)

    async def serve(
        self, sock: socket.socket, on_ready: Callable[[], None] | None = None, *, signals: bool = False
    ) -> None:
        """Run the lifespan, then answer on ``sock`` until ``stop`` (or SIGINT/SIGTERM with ``signals``)."""
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        stopping = self._stopping = asyncio.Event()
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, stopping.set)
        self._tick()
        async with self.app.router.lifespan_context(self.app):
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.listen(2048)  # a worker's own socket: connections come once it is ready
            listener = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
            self.started = True
            if on_ready is not None:
                on_ready()
            try:
                await stopping.wait()
            finally:
                listener.close()
                await self._drain()
                self._timer.cancel()

    def stop(self) -> None:
        """Stop accepting; requests in flight get ``grace_s`` to finish. Thread-safe."""
        if self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server has already stopped
                self.loop.call_soon_threadsafe(self._stopping.set)

    async def _drain(self) -> None:
        for conn in list(self.connections):
            if conn.task is None and conn.transport is not None:
                conn.transport.close()  # idle keep-alive connections
        deadline = self.loop.time() + self.grace_s
        while self.connections and self.loop.time() < deadline:
            busy = [c.task for c in self.connections if c.task is not None]
            if not busy:
                break
            await asyncio.wait(busy, timeout=max(0.0, deadline - self.loop.time()))
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)

    # one request

    def new_request_id(self) -> str:
        return f"{self._prefix}{next(self._seq):08x}"

    async def dispatch(self, conn: _Connection, request: _Request) -> None:
        path, _, query = request.url.partition(b"?")
        endpoint = INFERENCE_ROUTES.get(path.decode("latin-1")) if request.method == b"POST" else None
        if endpoint is None:
            await self._asgi(conn, request, path, query)
            return
        request_id = self.new_request_id()
        rid = request_id.encode()
        shedder = self.shedder
        if shedder is not None and shedder.inflight >= shedder.limit:
            status, headers, body = shedder.refusal()
            conn.write_answer(status, headers, body, keep_alive=request.keep_alive, request_id=rid)
            return
        if shedder is not None:
            shedder.inflight += 1
        try:
            await self._inference(conn, request, endpoint, request_id, rid)
        finally:
            if shedder is not None:
                shedder.inflight -= 1

    async def _inference(
        self, conn: _Connection, request: _Request, endpoint: Endpoint, request_id: str, rid: bytes
    ) -> None:
        send = _StreamSend(conn, request, rid)
        # A client that leaves before its answer cancels it (connection_lost), and with it the
        # upstream call; the gateway records what the backend had been given.
        conn.answering = task = asyncio.current_task()
        try:
            try:
                response = await self.gateway.handle(
                    endpoint,
                    request.header(b"authorization"),
                    request.body,
                    request_id,
                    send.early,
                )
            finally:
                conn.answering = None  # from here on the relay watches for the client leaving
        except asyncio.CancelledError:
            if not conn.lost or task is None:
                raise  # not the client's leaving: the server stopping
            task.uncancel()
            return
        except GatewayError as err:
            if send.started:  # after the stream's first event: it ends with one error event
                await _end_stream(send, err.body())
                return
            response = error_response(err)
        except Exception:
            log.exception("unhandled error on %s", request.url.decode("latin-1"))
            if send.started:
                await _end_stream(send, _SERVER_ERROR)
                return
            conn.write_answer(
                500,
                [(b"content-type", b"application/json")],
                _SERVER_ERROR,
                keep_alive=request.keep_alive,
                request_id=rid,
            )
            return
        if type(response) is Response:
            conn.write_answer(
                response.status_code, response.raw_headers, response.body, keep_alive=request.keep_alive, request_id=rid
            )
            return
        if isinstance(response, EventStreamResponse):
            if not send.started:
                send.begin(200, response.raw_headers)
            try:
                relayed = await response.relay(send.chunk, conn.gone)
            except Exception:  # a fault of ours mid-stream: the client still gets an end
                log.exception("unhandled error relaying a stream on %s", request.url.decode("latin-1"))
                await _end_stream(send, _SERVER_ERROR)
                return
            if relayed:
                await send.finish()
            return
        await response({"type": "http"}, _Receive(conn, b""), send)

    async def _asgi(self, conn: _Connection, request: _Request, path: bytes, query: bytes) -> None:
        transport = conn.transport
        assert transport is not None
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "root_path": "",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "headers": request.headers,
            "server": _addr(transport.get_extra_info("sockname")),
            "client": _addr(transport.get_extra_info("peername")),
            "state": {},
        }
        send = _StreamSend(conn, request, None)
        try:
            await self.app(scope, _Receive(conn, request.body), send)
        except OSError:
            return  # the client left
        if not send.started:
            conn.write_answer(500, [(b"content-type", b"application/json")], _SERVER_ERROR, keep_alive=False)
        elif not send.ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _end_stream(send: _StreamSend, error: bytes) -> None:
    with contextlib.suppress(OSError):  # the client has gone
        await send.chunk(frame(error))
        await send.finish()


class _Receive:
    """The ASGI ``receive``: the buffered body once, then waits for the client to leave."""

    def __init__(self, conn: _Connection, body: bytes) -> None:
        self.conn = conn
        self.body: bytes | None = body

    async def __call__(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.conn.gone
        return {"type": "http.disconnect"}


def _refusal(status: int, message: str) -> InvalidRequest:
    err = InvalidRequest(message)
    err.status = status
    return err


def _addr(value: Any) -> tuple[str, int] | None:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) and len(value) >= 2 else None


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A listening TCP socket; ``reuse_port`` lets other sockets listen on the same port, and
    without ``listen`` it only holds the port (see ``bind_for_workers``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.setblocking(False)
    return sock


def bind_for_workers(host: str, port: int) -> socket.socket:
    """The socket for ``run_workers``. On Linux a socket that only holds the port: each worker
    listens on a socket of its own there (SO_REUSEPORT) and the kernel spreads new connections
    evenly across them, where one shared accept queue lets the quickest worker take most of a
    light load. Elsewhere SO_REUSEPORT does not balance, so the workers share one listening socket."""
    if sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT"):
        # Without SO_REUSEPORT first: a port another server holds is refused here, rather than
        # joined, and port 0 becomes a real port.
        with bind(host, port, listen=False) as probe:
            port = probe.getsockname()[1]
        return bind(host, port, reuse_port=True, listen=False)
    return bind(host, port)


def run(app: GatewayApp, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, on uvloop when it is installed."""
    loop_factory: Any = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(Server(app).serve(sock, on_ready, signals=True))


def run_workers(workers: int, sock: socket.socket, build: Callable[[], GatewayApp]) -> int:
    """``workers`` processes, each with its own app from ``build`` (a module-level function, so
    that it can be named to a spawned process), on ``sock`` from ``bind_for_workers``: on its
    port each with a socket of its own if ``sock`` only holds it, else all accepting on ``sock``.
    SIGINT and SIGTERM are passed on; returns when every worker has ended."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(sock, build), name=f"fedrouter-worker-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()

    def forward(signum: int, _: Any) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


def _worker(sock: socket.socket, build: Callable[[], GatewayApp]) -> None:
    _end_with_parent()
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):  # it holds the port: take a socket beside it
        host, port = sock.getsockname()[:2]
        # Not listening yet: the kernel would queue connections for a worker still starting
        # (or one whose start fails). Server.serve listens once the app is ready.
        own = bind(host, port, reuse_port=True, listen=False)
        sock.close()
        sock = own
    run(build(), sock)


def _end_with_parent() -> None:
    """On Linux, SIGTERM this worker when the process that started it dies, even by SIGKILL: an
    orphaned worker would go on serving the port alone."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took hold
        os.kill(os.getpid(), signal.SIGTERM)
