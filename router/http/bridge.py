"""The ASGI bridge of fedrouter's own server: every route other than inference (admin, health,
models, dashboard) goes to the FastAPI app through a minimal ASGI 3 scope, receive and send."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from providers.flow_control import WriteStalled
from router.http.entry import SERVER_ERROR_ANSWER, decoded_path
from router.http.send import StreamSend

if TYPE_CHECKING:
    from router.http.asgi import GatewayApp
    from router.http.protocol import Connection
    from router.http.request import Request

log = logging.getLogger("fedrouter")


class Receive:
    """The ASGI ``receive``: the buffered body once, then waits for the client to leave."""

    __slots__ = ("body", "conn")

    def __init__(self, conn: Connection, body: bytes) -> None:
        self.conn = conn
        self.body: bytes | None = body

    async def __call__(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.conn.gone
        return {"type": "http.disconnect"}


def scope_of(conn: Connection, request: Request, path: bytes, query: bytes) -> dict[str, Any]:
    transport = conn.transport
    assert transport is not None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1" if request.http11 else "1.0",
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "root_path": "",
        "path": decoded_path(path),
        "raw_path": path,
        "query_string": query,
        "headers": request.headers,
        "server": _addr(transport.get_extra_info("sockname")),
        "client": _addr(transport.get_extra_info("peername")),
        "state": {},
    }


async def run_asgi(app: GatewayApp, conn: Connection, request: Request, path: bytes, query: bytes) -> None:
    """One request through the app. If the app fails, or returns without finishing its answer,
    the client gets a 500 if nothing was sent yet; otherwise the connection is aborted, since a
    half-sent answer followed by the next one would be read as one."""
    send = StreamSend(conn, request, None)
    try:
        await app(scope_of(conn, request, path, query), Receive(conn, request.body), send)
    except Exception as exc:
        request.keep_alive = False  # whatever was sent, the connection ends with this answer
        if conn.lost or isinstance(exc, WriteStalled):  # the client left, or stopped reading
            conn.abort()
            return
        log.exception("unhandled error serving %s", request.url.decode("latin-1"))
        if not send.started:
            _server_error(conn)
        elif not send.ended:
            conn.abort()
        return
    if not send.started:
        request.keep_alive = False
        _server_error(conn)
    elif not send.ended:
        await send.finish()


def _server_error(conn: Connection) -> None:
    answer = SERVER_ERROR_ANSWER
    conn.write_answer(answer.status, answer.headers, answer.body, keep_alive=False)


def _addr(value: Any) -> tuple[str, int] | None:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) and len(value) >= 2 else None
