"""Writing one answer on fedrouter's own connection: a whole answer in one write, or a streamed
one (chunked, or to the close for HTTP/1.0) whose head waits for its first piece of body so
that both leave in one write. Also the ASGI ``send`` of the bridge."""

from __future__ import annotations

import http
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from router.http.request import Request


class Writer(Protocol):
    """Where an answer is written: a connection (``router.http.protocol.Connection``)."""

    def status_line(self, status: int) -> bytes: ...
    def write_now(self, data: bytes) -> None: ...
    async def write(self, data: bytes) -> None: ...
    def abort(self) -> None: ...


_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class StatusLines:
    """``HTTP/1.1 <status> <reason>`` lines, made once each, and the date header, set once a second."""

    __slots__ = ("_lines", "date")

    def __init__(self) -> None:
        self._lines: dict[int, bytes] = {}
        self.date = b""

    def __call__(self, status: int) -> bytes:
        line = self._lines.get(status)
        if line is None:
            line = self._lines[status] = b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))
        return line + self.date


def whole_answer(
    status_line: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
    request_id: bytes | None,
    http10: bool = False,
) -> bytes:
    """A whole answer as it goes on the wire (``body`` is left out by the caller for HEAD)."""
    parts = [status_line]
    for name, value in headers:
        if name != b"content-length":
            parts += (name, b": ", value, b"\r\n")
    if request_id is not None:
        parts += (b"x-request-id: ", request_id, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    elif http10:
        parts.append(b"connection: keep-alive\r\n")  # HTTP/1.0 closes unless told otherwise
    parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
    return b"".join(parts)


class StreamSend:
    """The ASGI ``send`` of an answer whose length is not known in advance: chunked encoding; the
    head waits for the first piece of body, so both leave in one write."""

    __slots__ = ("chunked", "conn", "ended", "head", "request", "request_id", "started")

    def __init__(self, conn: Writer, request: Request, request_id: bytes | None) -> None:
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
        self.conn.write_now(self._framed(first, True))

    async def chunk(self, body: bytes) -> None:
        await self._body(body, True)

    async def finish(self) -> None:
        await self._body(b"", False)

    def begin(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        request = self.request
        names = {name.lower() for name, _ in headers}
        if b"connection" in names:  # the app's own (a 500's close): the server does as it says
            request.keep_alive = request.keep_alive and (b"connection", b"close") not in headers
        self.chunked = b"content-length" not in names and status not in (204, 304)
        if self.chunked and not request.http11:
            # HTTP/1.0 knows no chunks: the body runs to the end of the connection.
            self.chunked, request.keep_alive = False, False
        parts = [self.conn.status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if self.request_id is not None and b"x-request-id" not in names:
            parts += (b"x-request-id: ", self.request_id, b"\r\n")
        if self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if b"connection" in names:
            pass
        elif not request.keep_alive:
            parts.append(b"connection: close\r\n")
        elif not request.http11:
            parts.append(b"connection: keep-alive\r\n")
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
        self.ended = not more
        if self.request.method == b"HEAD":
            return out  # no body, so no chunk framing either: a "0" terminator would be read as the next answer
        if self.chunked:
            if body:
                out += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += body
        return out
