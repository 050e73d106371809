"""The HTTP/1.1 client in providers/http1.py against raw asyncio servers on loopback, each writing
exact bytes so a test controls the wire: framing, keep-alive, stale connections, timeouts, resets,
content-encoding, the request bytes, flow control and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import resource
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from providers.base import Limits, Timeouts
from providers.http1 import HttpError, LocalError, Pool, TooLarge

pytestmark = pytest.mark.timeout(10)

BODY = b'{"model":"m","messages":[]}'


# -- a raw server on loopback ----------------------------------------------------------------------


class Peer:
    """One accepted connection as the server sees it."""

    def __init__(self, wire: Wire, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.wire = wire
        self.index = index
        self.reader = reader
        self.writer = writer

    async def request(self) -> tuple[bytes, bytes] | None:
        """The next request's head and body, recorded on the wire; None once the client has closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.wire.requests.append((self.index, head, body))
        return head, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_by_client(self, within: float = 1.0) -> bool:
        """Whether the client closes this connection within ``within`` s (anything it sends is dropped)."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


Handler = Callable[[Peer], Awaitable[None]]


class Wire:
    """A loopback server running ``handler`` on each connection; keeps the peers and requests it saw."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.peers: list[Peer] = []
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection index, head, body)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pools: list[Pool] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/v1"

    def pool(self, headers: dict[str, str] | None = None, **options: Any) -> Pool:
        pool = Pool(self.base_url, headers or {}, **options)
        self._pools.append(pool)
        return pool

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the wire is closing; a handler task ending cancelled would be logged as an error
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def close(self) -> None:
        for pool in self._pools:
            await pool.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0.01)  # lets the last transports run connection_lost


Serve = Callable[..., Awaitable[Wire]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    wires: list[Wire] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Wire:
        wire = Wire(handler, ssl_context)
        wires.append(wire)
        await wire.start()
        return wire

    yield start
    for wire in reversed(wires):
        await wire.close()


def answer(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    """A whole response with a content-length."""
    head = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), head, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def answer_each(response: bytes) -> Handler:
    """Answers every request on the connection with ``response``, until the client closes."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    return handler


async def idle(peer: Peer) -> None:
    await asyncio.Event().wait()  # ends when the wire is closed


# -- framing ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_content_length_body(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b'{"ok":true}', b"content-type: application/json")))
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["content-length"] == "11"
    assert await resp.read(1.0) == b'{"ok":true}'
    assert await resp.readany(1.0) == b""
    resp.release()
    assert resp.closed


@pytest.mark.asyncio
async def test_chunked_body_is_read_piece_by_piece_as_it_arrives(serve: Serve) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    taken = [asyncio.Event() for _ in pieces]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for piece, done in zip(pieces, taken, strict=True):
            await peer.send(chunk(piece))
            await done.wait()  # the next piece only once the client has read this one
        await peer.send(b"0\r\n\r\n")
        await idle(peer)

    wire = await serve(handler)
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert resp.headers["transfer-encoding"] == "chunked"
    for piece, done in zip(pieces, taken, strict=True):
        assert await resp.readany(1.0) == piece
        done.set()
    assert await resp.readany(1.0) == b""
    resp.release()


@pytest.mark.asyncio
async def test_chunked_body_in_separate_writes_is_read_whole(serve: Serve) -> None:
    pieces = [b"alpha", b"beta" * 100, b"gamma"]

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(CHUNKED_HEAD)
            for piece in pieces:
                await asyncio.sleep(0.02)
                await peer.send(chunk(piece))
            await asyncio.sleep(0.02)
            await peer.send(b"0\r\n\r\n")

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    for _ in range(2):
        resp = await pool.post(head, BODY, 1.0)
        assert await resp.read(1.0) == b"".join(pieces)
        resp.release()
    assert len(wire.peers) == 1  # a chunked body read to its end leaves the connection reusable


@pytest.mark.asyncio
async def test_body_delimited_by_connection_close(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
        await asyncio.sleep(0.02)
        await peer.send(b'{"part":1,')
        await asyncio.sleep(0.02)
        await peer.send(b'"end":true}')
        # the handler returns: the server closes the connection, which ends the body

    wire = await serve(handler)
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert await resp.read(1.0) == b'{"part":1,"end":true}'
    resp.release()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)  # the closed connection is not reused
    assert await resp.read(1.0) == b'{"part":1,"end":true}'
    resp.release()
    assert len(wire.peers) == 2


@pytest.mark.asyncio
async def test_body_delimited_by_close_cut_by_a_reset_is_an_error(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + b'{"cut":')
        await asyncio.sleep(0.05)
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.writer.transport.abort()  # RST, not FIN: the body did not end, the connection broke

    wire = await serve(handler)
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    got = b""
    with pytest.raises(HttpError, match="closed by the backend"):
        while True:
            piece = await resp.readany(1.0)
            assert piece, "a reset ended the body as if it were complete"
            got += piece
    assert got == b'{"cut":'
    resp.release()


# -- keep-alive ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_released_connection_is_reused(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b"{}")))
    pool = wire.pool()
    head = pool.head("chat/completions")
    for n in range(3):
        resp = await pool.post(head, b'{"n":%d}' % n, 1.0)
        assert await resp.read(1.0) == b"{}"
        resp.release()
    assert len(wire.peers) == 1
    assert [(index, body) for index, _, body in wire.requests] == [(0, b'{"n":0}'), (0, b'{"n":1}'), (0, b'{"n":2}')]


@pytest.mark.asyncio
async def test_connection_close_in_the_answer_is_not_reused(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"{}", b"connection: close"))
        assert await peer.closed_by_client()

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    for _ in range(2):
        resp = await pool.post(head, BODY, 1.0)
        assert resp.headers["connection"] == "close"
        assert await resp.read(1.0) == b"{}"
        resp.release()
    assert len(wire.peers) == 2
    assert [index for index, _, _ in wire.requests] == [0, 1]


@pytest.mark.asyncio
async def test_release_before_the_end_of_the_body_closes_the_connection(serve: Serve) -> None:
    saw_close: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")
        saw_close.append(await peer.closed_by_client())

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.readany(1.0) == b"01234"
    resp.release()
    assert await resp.readany(1.0) == b""  # a released response has nothing more to give
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.readany(1.0) == b"01234"
    resp.release()
    await asyncio.sleep(0.05)
    assert len(wire.peers) == 2
    assert saw_close == [True, True]


# -- stale keep-alive connections ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("pause", [0.0, 0.05])
async def test_kept_alive_connection_closed_by_the_server_is_replaced(serve: Serve, pause: float) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b'{"conn":%d}' % peer.index))
        # the server ends its idle connection (its keep-alive timeout)

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    resp = await pool.post(head, b"first", 1.0)
    assert await resp.read(1.0) == b'{"conn":0}'
    resp.release()
    await asyncio.sleep(pause)  # 0: the close races the next request; 0.05: the pool has seen it
    resp = await pool.post(head, b"second", 1.0)
    assert await resp.read(1.0) == b'{"conn":1}'
    resp.release()
    assert len(wire.peers) == 2
    assert [(index, body) for index, _, body in wire.requests] == [(0, b"first"), (1, b"second")]


@pytest.mark.asyncio
async def test_request_dropped_by_a_kept_alive_connection_is_not_sent_again(serve: Serve) -> None:
    """The backend read the request, then closed without a byte of answer: it may have begun a
    generation (and been paid for it), so the request is that attempt's failure, never re-sent."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b'{"conn":%d}' % peer.index))
        if peer.index == 0:
            await peer.request()  # closes as the next request arrives, without a byte of answer

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    resp = await pool.post(head, b"first", 1.0)
    assert await resp.read(1.0) == b'{"conn":0}'
    resp.release()
    with pytest.raises(HttpError, match="closed by the backend"):
        await pool.post(head, b"second", 1.0)
    await asyncio.sleep(0.05)
    assert [(index, body) for index, _, body in wire.requests] == [(0, b"first"), (0, b"second")]
    resp = await pool.post(head, b"third", 1.0)  # the next request gets a new connection
    assert await resp.read(1.0) == b'{"conn":1}'
    resp.release()


@pytest.mark.asyncio
async def test_fresh_connection_closed_without_answer_is_an_error_not_resent(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()

    wire = await serve(handler)
    pool = wire.pool()
    with pytest.raises(HttpError, match="closed by the backend"):
        await pool.post(pool.head("chat/completions"), BODY, 1.0)
    await asyncio.sleep(0.05)
    assert len(wire.peers) == 1
    assert len(wire.requests) == 1


# -- timeouts --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_no_answer_times_out_and_drops_the_connection(serve: Serve) -> None:
    saw_close: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        saw_close.append(await peer.closed_by_client(2.0))

    wire = await serve(handler)
    pool = wire.pool()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await pool.post(pool.head("chat/completions"), BODY, 0.2)
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 0.6
    await asyncio.sleep(0.05)
    assert saw_close == [True]


@pytest.mark.asyncio
async def test_stalled_body_times_out_and_the_connection_is_not_reused(serve: Serve) -> None:
    saw_close: list[bool] = []

    async def handler(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(CHUNKED_HEAD + chunk(b"data: first\n\n"))
        if peer.index == 0:
            saw_close.append(await peer.closed_by_client(2.0))  # stalls the body
        else:
            await peer.send(b"0\r\n\r\n")
            await idle(peer)

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.readany(0.2) == b"data: first\n\n"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await resp.readany(0.2)
    assert 0.19 <= time.monotonic() - start < 0.6
    resp.release()
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.read(1.0) == b"data: first\n\n"
    resp.release()
    assert len(wire.peers) == 2
    assert saw_close == [True]


# -- broken answers --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reset_mid_body_is_an_error(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: one\n\n") + b"40\r\ndata: tw")
        await asyncio.sleep(0.02)

    wire = await serve(handler)
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    got = b""
    with pytest.raises(HttpError, match="closed by the backend"):
        for _ in range(10):
            got += await resp.readany(1.0)
    assert got.startswith(b"data: one\n\n")
    resp.release()


@pytest.mark.asyncio
@pytest.mark.parametrize("garbage", [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"])
async def test_an_answer_that_is_not_http_is_an_error(serve: Serve, garbage: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(garbage)
        await idle(peer)

    wire = await serve(handler)
    pool = wire.pool()
    with pytest.raises(HttpError, match="not valid HTTP"):
        await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert await wire.peers[0].closed_by_client()


# -- content-encoding ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_compressed_body_is_decoded(serve: Serve, encoding: str, compress: Callable[[bytes], bytes]) -> None:
    payload = b'{"choices":[{"text":"' + b"hello " * 2000 + b'"}]}'
    packed = compress(payload)
    assert len(packed) < len(payload) // 10

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer(packed, b"content-encoding: " + encoding.encode()))
            await peer.request()
            # the same bytes again, chunked in small pieces across separate writes
            await peer.send(CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: %s\r\n\r\n" % encoding.encode()))
            for at in range(0, len(packed), 7):
                await peer.send(chunk(packed[at : at + 7]))
            await peer.send(b"0\r\n\r\n")

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    for _ in range(2):
        resp = await pool.post(head, BODY, 1.0)
        assert resp.headers["content-encoding"] == encoding
        assert await resp.read(1.0) == payload
        resp.release()
    assert len(wire.peers) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("cut", ["whole", "chunked"])
async def test_corrupt_compressed_body_is_an_error_and_closes(serve: Serve, cut: str) -> None:
    packed = bytearray(gzip.compress(b'{"choices":[{"text":"' + b"hello " * 2000 + b'"}]}'))
    packed[20:50] = bytes(30)  # the deflate stream is broken from here on
    saw_close: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        if cut == "whole":
            await peer.send(answer(bytes(packed), b"content-encoding: gzip"))
        else:
            await peer.send(CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n"))
            await peer.send(chunk(bytes(packed[:10])) + chunk(bytes(packed[10:])))
        saw_close.append(await peer.closed_by_client())

    wire = await serve(handler)
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    with pytest.raises(HttpError, match="compressed body is corrupt"):
        await resp.read(1.0)
    assert resp.closed
    await asyncio.sleep(0.05)
    assert saw_close == [True]


@pytest.mark.asyncio
async def test_interim_answers_are_skipped(serve: Serve) -> None:
    """100 Continue or 103 Early Hints before the answer: the answer is the one that follows."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n"
    wire = await serve(answer_each(interim + answer(b'{"ok":true}', b"x-real: yes")))
    pool = wire.pool()
    for _ in range(2):  # and the connection is reused after it
        resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
        assert (resp.status, resp.headers.get("x-real"), "link" in resp.headers) == (200, "yes", False)
        assert await resp.read(1.0) == b'{"ok":true}'
        resp.release()
    assert len(wire.peers) == 1


@pytest.mark.asyncio
async def test_unsupported_content_encoding_is_an_error(serve: Serve) -> None:
    saw_close: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"\x0b\x02\x80{}\x03", b"content-encoding: br"))
        saw_close.append(await peer.closed_by_client())

    wire = await serve(handler)
    pool = wire.pool()
    with pytest.raises(HttpError, match="unsupported content-encoding 'br'"):
        await pool.post(pool.head("chat/completions"), BODY, 1.0)
    await asyncio.sleep(0.05)
    assert saw_close == [True]


# -- the request on the wire -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_request_bytes_on_the_wire(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b"{}")))
    pool = wire.pool({"authorization": "Bearer sk-test", "content-type": "application/json"})
    head = pool.head("chat/completions", {"accept": "text/event-stream"})
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.read(1.0) == b"{}"
    resp.release()
    [(_, raw, body)] = wire.requests
    assert raw == (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        b"host: 127.0.0.1:%d\r\n"
        b"authorization: Bearer sk-test\r\n"
        b"content-type: application/json\r\n"
        b"accept: text/event-stream\r\n"
        b"content-length: %d\r\n\r\n" % (wire.port, len(BODY))
    )
    assert body == BODY


@pytest.mark.asyncio
async def test_large_request_body_arrives_intact(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b"{}")))
    pool = wire.pool()
    big = os.urandom(5 * 1024 * 1024)
    resp = await pool.post(pool.head("embeddings"), big, 2.0)
    assert await resp.read(1.0) == b"{}"
    resp.release()
    [(_, raw, body)] = wire.requests
    assert raw.startswith(b"POST /v1/embeddings HTTP/1.1\r\n")
    assert b"content-length: %d\r\n" % len(big) in raw
    assert body == big


@pytest.mark.asyncio
async def test_large_response_body_is_read_intact_with_bounded_buffering(serve: Serve) -> None:
    big = os.urandom(5 * 1024 * 1024)
    wire = await serve(answer_each(answer(big)))
    pool = wire.pool()
    head = pool.head("chat/completions")
    resp = await pool.post(head, BODY, 1.0)
    await asyncio.sleep(0.2)  # the client reads nothing meanwhile: the socket must stop being read
    conn = resp._conn
    assert conn is not None
    assert 0 < conn.buffered <= 2 * 1024 * 1024  # about 1 MiB, then reading paused; never the whole 5 MB
    assert await resp.read(1.0) == big
    resp.release()
    resp = await pool.post(head, BODY, 1.0)  # reading resumed to the end: the connection is reusable
    assert await resp.read(1.0) == big
    resp.release()
    assert len(wire.peers) == 1


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "c.pem", folder / "k.pem"
    subprocess.run(
        [
            "/usr/bin/openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    cert, key = certificate
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.asyncio
async def test_tls_with_a_trusted_certificate(serve: Serve, certificate: tuple[Path, Path]) -> None:
    wire = await serve(answer_each(answer(b'{"tls":true}')), _server_context(certificate))
    assert wire.base_url.startswith("https://")
    pool = wire.pool(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
    head = pool.head("chat/completions")
    for _ in range(2):
        resp = await pool.post(head, BODY, 1.0)
        assert await resp.read(1.0) == b'{"tls":true}'
        resp.release()
    assert len(wire.peers) == 1
    assert [body for _, _, body in wire.requests] == [BODY, BODY]


@pytest.mark.asyncio
async def test_tls_with_an_untrusted_certificate_is_an_error(serve: Serve, certificate: tuple[Path, Path]) -> None:
    wire = await serve(answer_each(answer(b"{}")), _server_context(certificate))
    pool = wire.pool()
    with pytest.raises(HttpError, match=f"could not connect to 127.0.0.1:{wire.port}.*CERTIFICATE_VERIFY_FAILED"):
        await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert wire.requests == []


@pytest.mark.asyncio
async def test_tls_body_delimited_by_connection_close(serve: Serve, certificate: tuple[Path, Path]) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + b'{"tls":')
        await asyncio.sleep(0.02)
        await peer.send(b'"closed"}')

    wire = await serve(handler, _server_context(certificate))
    pool = wire.pool(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert await resp.read(1.0) == b'{"tls":"closed"}'
    resp.release()


# -- the pool --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pool_close_closes_idle_connections(serve: Serve) -> None:
    saw_close: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"{}"))
        saw_close.append(await peer.closed_by_client())

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    responses = [await pool.post(head, BODY, 1.0) for _ in range(2)]  # two at once: two connections
    for resp in responses:
        assert await resp.read(1.0) == b"{}"
        resp.release()
    await asyncio.sleep(0.05)
    assert saw_close == []  # idle in the pool, still open
    await pool.close()
    await asyncio.sleep(0.05)
    assert saw_close == [True, True]


@pytest.mark.asyncio
async def test_connection_refused_names_the_address() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        port = sock.getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}/v1", {})
        try:
            with pytest.raises(HttpError, match=f"could not connect to 127.0.0.1:{port}"):
                await pool.post(pool.head("chat/completions"), BODY, 1.0)
        finally:
            await pool.close()


# -- what an untrusted backend can make the client hold ----------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"x-flood: y\r\n" * 102, "over 100 headers"),
        (b"HTTP/1.1 200 OK\r\nx-flood: " + b"y" * 70_000 + b"\r\ncontent-length: 2\r\n\r\n{}", "64 KB"),
        (b"HTTP/1.1 200 OK\r\nx-endless: " + b"y" * 200_000, "head over 64 KB"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 5000, "head over 64 KB"),
    ],
    ids=["count", "bytes", "endless", "interim"],
)
async def test_an_answer_head_is_bounded(serve: Serve, head: bytes, why: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(head)
        await asyncio.sleep(2)  # the head never ends

    wire = await serve(handler)
    pool = wire.pool()
    started = time.monotonic()
    with pytest.raises(HttpError, match=why):
        await pool.post(pool.head("chat/completions"), BODY, 1.5)
    assert time.monotonic() - started < 1.0  # refused as it came, not at the deadline
    assert await wire.peers[0].closed_by_client()


@pytest.mark.asyncio
async def test_repeated_headers_are_joined(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b"{}", *[b"x-many: %d" % i for i in range(90)])))
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert resp.headers["x-many"] == ", ".join(str(i) for i in range(90))
    resp.release()


@pytest.mark.asyncio
@pytest.mark.parametrize("later", [False, True], ids=["same-write", "while-idle"])
async def test_bytes_after_an_answer_make_its_connection_unusable(serve: Serve, later: bool) -> None:
    """Stray bytes are never read as the next request's answer: that connection is dropped."""
    stray = answer(b'{"stray":true}')

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            if later:
                await peer.send(answer(b'{"conn":%d}' % peer.index))
                await asyncio.sleep(0.05)
                await peer.send(stray)
            else:
                await peer.send(answer(b'{"conn":%d}' % peer.index) + stray)

    wire = await serve(handler)
    pool = wire.pool()
    head = pool.head("chat/completions")
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.read(1.0) == b'{"conn":0}'
    resp.release()
    await asyncio.sleep(0.15)
    resp = await pool.post(head, BODY, 1.0)
    assert await resp.read(1.0) == b'{"conn":1}'
    resp.release()
    assert len(wire.peers) == 2 and len(wire.requests) == 2


@pytest.mark.asyncio
async def test_a_decompression_bomb_is_inflated_a_slice_at_a_time_up_to_the_limit(serve: Serve) -> None:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(squeeze.compress(bytes(1 << 20)) for _ in range(64)) + squeeze.flush()  # 64 MB inflated
    assert len(bomb) < 100_000

    wire = await serve(answer_each(answer(bomb, b"content-encoding: gzip")))
    pool = wire.pool(limits=Limits(max_response_bytes=4 << 20))
    head = pool.head("chat/completions")
    started = time.monotonic()
    resp = await pool.post(head, BODY, 1.0)
    with pytest.raises(TooLarge, match="larger than 4194304 bytes"):
        await resp.read(2.0)
    assert resp.closed and time.monotonic() - started < 1.0
    resp = await pool.post(head, BODY, 1.0)
    sizes = [len(await resp.readany(1.0)) for _ in range(20)]
    assert max(sizes) <= 64 * 1024  # however much a read would inflate to
    resp.close()


@pytest.mark.asyncio
async def test_an_encoding_not_asked_for_is_refused(serve: Serve) -> None:
    wire = await serve(answer_each(answer(gzip.compress(b"{}"), b"content-encoding: gzip")))
    pool = wire.pool({"accept-encoding": "identity"})
    with pytest.raises(HttpError, match="content-encoding it was not asked for: 'gzip'"):
        await pool.post(pool.head("chat/completions"), BODY, 1.0)


@pytest.mark.asyncio
async def test_read_stops_at_its_limit(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b"x" * 100_000)))
    pool = wire.pool()
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    with pytest.raises(TooLarge):
        await resp.read(1.0, limit=65536)
    assert resp.closed


@pytest.mark.asyncio
async def test_requests_beyond_max_connections_wait_for_one_then_fail_locally(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await asyncio.sleep(0.2)
            await peer.send(answer(b'{"conn":%d}' % peer.index))

    wire = await serve(handler)
    pool = wire.pool(limits=Limits(max_connections=1), timeouts=Timeouts(connect=0.5))
    head = pool.head("chat/completions")

    async def one() -> bytes:
        resp = await pool.post(head, BODY, 2.0)
        body = await resp.read(1.0)
        resp.release()
        return body

    # The second waits for the first's connection and gets it once released: one connection.
    assert await asyncio.gather(one(), one()) == [b'{"conn":0}', b'{"conn":0}']
    assert len(wire.peers) == 1
    held = await pool.post(head, BODY, 2.0)  # holds the only connection
    started = time.monotonic()
    with pytest.raises(LocalError, match=r"all 1 connections to 127\.0\.0\.1:\d+ are in use"):
        await pool.post(head, BODY, 2.0)
    assert 0.4 < time.monotonic() - started < 1.0  # within the connect timeout
    held.close()


@pytest.mark.asyncio
async def test_running_out_of_file_descriptors_is_a_local_failure(serve: Serve) -> None:
    wire = await serve(answer_each(answer(b"{}")))
    pool = wire.pool()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 16, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                spare.append(os.dup(0))
        with pytest.raises(LocalError, match="Too many open files"):
            await pool.post(pool.head("chat/completions"), BODY, 1.0)
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)  # and fine again once fds are back
    assert await resp.read(1.0) == b"{}"
    resp.release()
