"""fedrouter's HTTP/1.1 server: serves one GatewayApp on a listening socket, the inference routes
answered straight from the parsed request through the one inference entry (``router.http.entry``),
every other route through the ASGI bridge (``router.http.bridge``). Its connections are
``router.http.protocol``'s; its processes and sockets, ``router.http.workers``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
from collections.abc import Callable
from email.utils import formatdate

from router.http.asgi import GatewayApp
from router.http.bridge import run_asgi
from router.http.entry import Entry, decoded_path, failure, inference_route, last_event
from router.http.events import pump
from router.http.protocol import Connection
from router.http.request import Request
from router.http.send import StatusLines, StreamSend
from router.http.shedding import REFUSAL
from router.pipeline.answer import Answer, StreamAnswer
from router.pipeline.responses import Route

log = logging.getLogger("fedrouter")


class Server:
    """Serves one GatewayApp on a listening socket until ``stop``; runs the app's lifespan."""

    def __init__(self, app: GatewayApp, *, grace_s: float = 10.0, idle_s: float = 30.0) -> None:
        self.app = app
        self.idle_s = idle_s  # a connection with no request in flight is closed after this long silent
        self.now = 0.0
        self.entry: Entry = app.state.entry
        self.max_body: int = self.entry.max_body
        self.write_stall_s: float | None = self.entry.write_stall_s
        limits = app.state.config.limits
        self.head_timeout_s: float = limits.head_timeout_s
        self.body_timeout_s: float = limits.body_timeout_s
        self.max_connections: int = connection_cap(limits.max_connections)
        self.turned_away = 0
        self.grace_s = grace_s
        self.connections: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # the serving loop, set by serve()
        self.status_line = StatusLines()
        self._stopping: asyncio.Event | None = None
        self.started = False

    def new_request_id(self) -> str:
        return self.entry.ids()

    def _tick(self) -> None:
        # Once a second rather than per request: the date header, and closing idle connections
        # (kept-alive ones, and any that never finish sending a request).
        self.status_line.date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        self.now = now = self.loop.time()
        for conn in list(self.connections):
            if conn.late(now):
                continue  # refused (408); it closes once the answers owed before it are out
            if conn.task is None and now - conn.active > self.idle_s and conn.transport is not None:
                conn.transport.close()
        every = min(1.0, self.idle_s / 2, self.head_timeout_s / 2, self.body_timeout_s / 2)
        self._timer = self.loop.call_later(every, self._tick)

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
            listener = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
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

    def log_fault(self, request: Request) -> None:
        log.exception("unhandled error serving %s", request.url.decode("latin-1"))

    # one request

    async def dispatch(self, conn: Connection, request: Request) -> None:
        path, _, query = request.url.partition(b"?")
        endpoint = inference_route(request.method, decoded_path(path))
        if endpoint is None:
            await run_asgi(self.app, conn, request, path, query)
            return
        request_id = self.entry.ids()
        rid = request_id.encode()
        shedder = self.entry.shedder
        if not shedder.admit():
            self._write(conn, request, REFUSAL, rid)
            return
        try:
            await self._inference(conn, request, endpoint, request_id, rid)
        finally:
            shedder.leave()

    async def _inference(
        self, conn: Connection, request: Request, endpoint: Route, request_id: str, rid: bytes
    ) -> None:
        send = StreamSend(conn, request, rid)
        # A client that leaves before its answer cancels it (connection_lost), and with it the
        # upstream call; the gateway records what the backend had been given.
        conn.answering = task = asyncio.current_task()
        try:
            try:
                result = await self.entry.gateway.handle(
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
        except Exception as exc:
            where = request.url.decode("latin-1")
            if send.started:  # after the stream's first event: it ends with one error event
                await _end_stream(send, last_event(exc, where))
                return
            answer = failure(exc, where)
            if answer is not None:
                self._write(conn, request, answer, rid)
            return
        if isinstance(result, Answer):
            self._write(conn, request, result, rid)
        else:
            await self._relay(conn, request, send, result)

    def _write(self, conn: Connection, request: Request, answer: Answer, rid: bytes) -> None:
        conn.write_answer(
            answer.status,
            answer.headers,
            answer.body,
            keep_alive=request.keep_alive,
            request_id=rid,
            http10=not request.http11,
        )

    async def _relay(self, conn: Connection, request: Request, send: StreamSend, stream: StreamAnswer) -> None:
        if not send.started:
            send.begin(200, stream.headers)
        try:
            relayed = await pump(stream, send.chunk, conn.gone)
        except Exception as exc:  # a fault of ours mid-stream: the client still gets an end
            await _end_stream(send, last_event(exc, request.url.decode("latin-1")))
            return
        if relayed:
            await _end_stream(send, None)  # a client that stops reading now is aborted, as mid-stream
        elif not conn.lost:
            request.keep_alive = False  # it stopped reading, or outlasted its time: the answer is cut short
            conn.abort()


def connection_cap(configured: int) -> int:
    """``limits.max_connections``, kept under half the open-file limit: the other half is for the
    backends' connections, the ledger and the state store, so that a flood of clients cannot
    make the gateway fail its own work for lack of descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft // 2))


async def _end_stream(send: StreamSend, event: bytes | None) -> None:
    """End a begun stream with ``event``; a client that has gone or stops reading meanwhile gets
    its connection aborted, never a next answer after a stream left unfinished."""
    try:
        if event is not None:
            await send.chunk(event)
        await send.finish()
    except OSError:  # WriteStalled included: a TimeoutError
        send.request.keep_alive = False
        send.conn.abort()
