"""A lean HTTP/1.1 client for the request path: keep-alive connections to one origin, parsed by
httptools (llhttp).

aiohttp's client costs more per proxied request (URL objects, tracing hooks, cookie handling, a
timer context per phase) than the rest of the gateway's work together, and an OpenAI-compatible
backend needs none of it: POST a body, then read a JSON body or a stream of chunks back. This is
that and no more: one origin per pool, requests pipelined never, bodies as bytes.
"""

from __future__ import annotations

import asyncio
import errno
import select
import ssl
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

from providers.base import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, Limits, Timeouts
from providers.http1_connection import Connection, HttpError
from providers.ticker import Ticker

__all__ = ["HttpError", "LocalError", "Origin", "Pool", "Response", "TooLarge"]

# An idle connection is dropped before common servers drop theirs (uvicorn, so vLLM: 5 s): a
# request written as the server closes is that attempt's failure, never re-sent, so that race is
# best not run at all.
_KEEPALIVE_S = 4.0
_INFLATE_STEP = 64 * 1024  # decompressed bytes per step: a bomb is inflated a slice at a time
# The machine's own shortage, not the backend's: out of file descriptors or socket buffers.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class TooLarge(HttpError):
    """The answer is larger than the gateway holds for one answer (``max_response_bytes``)."""


class LocalError(Exception):
    """The gateway itself is short (file descriptors, its cap on connections to this backend):
    nothing the backend did, so never counted against it."""


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


class Response:
    """An answer whose headers have arrived; its body is read with ``read`` or ``readany``.
    ``release`` hands the connection back for reuse once the body has been read to its end."""

    def __init__(self, pool: Pool, conn: Connection) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self.status = conn.status
        self.headers = _joined(conn.header_list)
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        self._decoder: Any = None
        self._tail = b""  # compressed input not yet inflated (one step yields at most _INFLATE_STEP)
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding != "identity":
            self.close()
            raise HttpError(f"the backend answered with an unsupported content-encoding {encoding!r}")
        if self._decoder is not None and not pool.accepts(encoding):
            self.close()
            raise HttpError(f"the backend answered with a content-encoding it was not asked for: {encoding!r}")

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def readany(self, within: float | None = None) -> bytes:
        """The body bytes that have arrived (waiting up to ``within`` s for some); b"" at its end.
        A compressed body comes out in slices of at most 64 KB, however much one read inflates to."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if self._tail:
                await asyncio.sleep(0)  # inflating is CPU work: others run between two slices
                if chunk := self._inflate(b""):
                    return chunk
            elif conn.chunks:
                chunk = conn.take()
                if self._decoder is None:
                    return chunk
                if chunk := self._inflate(chunk):
                    return chunk
            elif conn.complete:
                return self._flush() if self._decoder is not None else b""
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(within)

    def _inflate(self, chunk: bytes) -> bytes:
        try:
            out: bytes = self._decoder.decompress(self._tail + chunk if self._tail else chunk, _INFLATE_STEP)
        except zlib.error as exc:
            self.close()
            raise HttpError(f"the backend's compressed body is corrupt: {exc}") from None
        if self._decoder.unused_data:
            # zlib keeps what follows the end in unused_data, a copy longer with every read:
            # unbounded by max_response_bytes (nothing inflates) and quadratic in time.
            self.close()
            raise HttpError("the backend sent bytes after its compressed body")
        self._tail = self._decoder.unconsumed_tail
        return out

    def _flush(self) -> bytes:
        try:
            return self._decoder.flush()  # type: ignore[no-any-return]  # zlib's decompressobj: bytes
        except zlib.error as exc:
            self.close()
            raise HttpError(f"the backend's compressed body is corrupt: {exc}") from None

    async def read(self, within: float | None = None, limit: int | None = None) -> bytes:
        """The whole body, within ``within`` s in all (a body that trickles in is no exception) and
        of at most ``limit`` bytes, decompressed (the backend's ``max_response_bytes`` if None)."""
        loop_time = asyncio.get_running_loop().time
        end = None if within is None else loop_time() + within
        limit = self._pool.limits.max_response_bytes if limit is None else limit
        parts = []
        size = 0
        while chunk := await self.readany(None if end is None else max(0.0, end - loop_time())):
            size += len(chunk)
            if size > limit:
                self.close()
                raise TooLarge(f"the backend's answer is larger than {limit} bytes")
            if end is not None and loop_time() >= end:  # bytes kept coming, each in time: still late
                self.close()
                raise TimeoutError
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Back to the pool if the body was read to its end, else the connection is closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.complete and conn.keep_alive and conn.error is None and not conn.chunks and not conn.stray:
            self._pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _joined(header_list: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers by lower-case name; a repeated one's values joined once, with commas."""
    seen: dict[str, list[str]] = {}
    for name, value in header_list:
        seen.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return {name: values[0] if len(values) == 1 else ", ".join(values) for name, values in seen.items()}


def _accepted(headers: dict[str, str]) -> frozenset[str] | None:
    """The content-codings a request's accept-encoding asks for; None: no header, so any."""
    for name, value in headers.items():
        if name.lower() == "accept-encoding":
            codings = {part.split(";")[0].strip().lower() for part in value.split(",")}
            return frozenset(codings | ({"x-gzip"} if "gzip" in codings else set()))
    return None


def _quiet(conn: Connection) -> bool:
    """Nothing waits to be read on an idle connection: neither its close nor stray bytes. The
    loop may not have run their callbacks yet; the kernel knows already."""
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return not poller.poll(0)


class Pool:
    """Keep-alive connections to one origin, most recently used first, at most
    ``limits.max_connections`` open at once."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: Limits = DEFAULT_LIMITS,
        keepalive_s: float = _KEEPALIVE_S,
        max_idle: int = 512,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin(base_url)
        self.limits = limits
        self._ticker = Ticker()  # the read timeouts of every connection of this pool
        self._ssl = (ssl_context or ssl.create_default_context()) if self.origin.tls else None
        self._static = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._accepted = _accepted(headers)
        self._connect_timeout = timeouts.connect
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._connecting = 0
        self._room: asyncio.Future[None] | None = None  # set when a connection frees or closes

    def accepts(self, encoding: str) -> bool:
        return self._accepted is None or encoding in self._accepted

    def head(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        """The request line and headers up to Content-Length, built once per kind of request."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        return (
            f"POST {self.origin.path}/{path} HTTP/1.1\r\nhost: {self.origin.authority}\r\n"
            f"{self._static}{extra}content-length: "
        ).encode("latin-1")

    async def post(self, head: bytes, body: bytes, within: float | None) -> Response:
        """Send one request (``head`` from ``head()``) and wait up to ``within`` s for its headers.

        A generation is not idempotent: the request is sent again (on a new connection) only if
        not a byte of it can have left. Once written, a connection that closes without answering
        fails this attempt, and dispatch decides what comes next."""
        data = head + str(len(body)).encode() + b"\r\n\r\n"
        conn = await self._take()
        try:
            return await self._exchange(conn, data, body, within)
        except HttpError:
            if conn.sent:
                raise
        return await self._exchange(await self._take(), data, body, within)

    async def _exchange(self, conn: Connection, data: bytes, body: bytes, within: float | None) -> Response:
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

    async def _take(self) -> Connection:
        """An idle connection, or a new one once there is room under ``max_connections``; waiting
        for room lasts at most the connect timeout, then fails as the gateway's own overload."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self._connect_timeout
        while True:
            if (conn := self._reuse()) is not None:
                return conn
            if len(self._open) + self._connecting < self.limits.max_connections:
                return await self._connect()
            if self._room is None:
                self._room = loop.create_future()
            try:
                async with asyncio.timeout_at(end):
                    await asyncio.shield(self._room)
            except TimeoutError:
                raise LocalError(
                    f"all {self.limits.max_connections} connections to {self.origin.authority} are in use "
                    "(max_connections)"
                ) from None

    def _freed(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def _gone(self, conn: Connection) -> None:
        self._open.discard(conn)
        self._freed()

    def _reuse(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self._keepalive_s) and _quiet(conn):
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        self._connecting += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._gone, self._ticker),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise HttpError(f"could not connect to {origin.authority} within {self._connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            if not isinstance(exc, ssl.SSLError) and exc.errno in _LOCAL_ERRNOS:
                raise LocalError(f"could not open a connection to {origin.authority}: {exc}") from None
            raise HttpError(f"could not connect to {origin.authority}: {exc}") from None
        finally:
            self._connecting -= 1
            self._freed()
        self._open.add(conn)
        return conn

    def put(self, conn: Connection) -> None:
        if len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._freed()

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # lets the transports run their connection_lost
