"""The connection protocol in memory, against a transport that records what is written (as
uvicorn tests its protocols): the edge cases of parsing and limits, with no sockets and no
timing. The end-to-end cases over sockets are in test_server.py and test_hostile_clients.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from router.http.protocol import Connection
from router.http.server import Server
from tests.servers import gateway_app

pytestmark = pytest.mark.asyncio

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


class Transport(asyncio.Transport):
    """Records what the protocol writes, and whether it paused reading, half-closed or closed."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = self.eof = self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("peername", "sockname") else default


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    raw = {
        "backends": [
            {
                "name": "b",
                "class": "datacenter",
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "models": ["m1"],
            }
        ],
        "tenants": [{"name": "acme"}],
        "limits": {"max_connections": 2, "head_timeout_s": 1.0},
    }
    app = gateway_app(raw, ledger="sqlite:///:memory:")
    srv = Server(app)
    srv.loop = asyncio.get_running_loop()
    srv.now = srv.loop.time()
    yield srv
    for conn in list(srv.connections):
        if conn.task is not None:
            conn.task.cancel()


def connect(server: Server) -> tuple[Connection, Transport]:
    conn, transport = Connection(server), Transport()
    conn.connection_made(transport)
    return conn, transport


async def settled(conn: Connection) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
        if conn.task is None:
            return


def answers(transport: Transport) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers written, each as status, headers and body (content-length framed)."""
    out, found = bytes(transport.out), []
    while out:
        head, _, out = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, out[:size]))
        out = out[size:]
    return found


async def test_http_0_9_is_refused_with_505(server: Server) -> None:
    conn, transport = connect(server)
    conn.data_received(b"GET /healthz\r\n\r\n")
    [(status, headers, body)] = answers(transport)
    assert status == 505 and headers["connection"] == "close" and transport.eof
    assert orjson.loads(body)["error"]["message"] == "HTTP/0.9 is not supported."


@pytest.mark.parametrize("reads", [1, 3])
async def test_whitespace_counts_against_the_head_limit(server: Server, reads: int) -> None:
    conn, transport = connect(server)
    data = b"GET /healthz HTTP/1.1\r\nx-pad:" + b" " * 70_000
    step = -(-len(data) // reads)
    for i in range(0, len(data), step):
        conn.data_received(data[i : i + step])
    [(status, headers, _)] = answers(transport)
    assert status == 431 and headers["x-should-retry"] == "false" and transport.eof


async def test_a_late_head_is_408(server: Server) -> None:
    conn, transport = connect(server)
    conn.data_received(b"GET /healthz HTTP/1.1\r\nhost")
    assert not conn.late(server.now + 0.5)
    assert conn.late(server.now + 1.5)
    [(status, headers, body)] = answers(transport)
    assert status == 408 and headers["x-should-retry"] == "true"
    assert orjson.loads(body)["error"]["message"] == "The request headers did not arrive within 1 s."


async def test_connections_over_the_cap_are_turned_away(server: Server) -> None:
    kept = [connect(server) for _ in range(2)]
    conn, transport = connect(server)
    [(status, headers, body)] = answers(transport)
    assert status == 503 and headers["connection"] == "close" and headers["x-should-retry"] == "true"
    assert orjson.loads(body)["error"]["code"] == "overloaded" and transport.eof
    assert conn not in server.connections and all(c in server.connections for c, _ in kept)


async def test_expect_on_a_pipelined_request_waits_for_the_answer_before_it(server: Server) -> None:
    conn, transport = connect(server)
    conn.data_received(HEALTHZ + b"POST /admin/v1/keys HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
    assert b"100 Continue" not in transport.out  # the first answer is not written yet
    await settled(conn)
    first, _, rest = bytes(transport.out).partition(b'{"status":"ok"}')
    assert first.startswith(b"HTTP/1.1 200 ") and rest == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_http_1_0_gets_no_continue(server: Server) -> None:
    conn, transport = connect(server)
    conn.data_received(b"POST /admin/v1/keys HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
    await settled(conn)
    assert transport.out == b""
