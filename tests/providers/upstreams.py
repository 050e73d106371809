"""Scripted upstreams for the provider contract suite, and the one factory that points a provider
of any kind at one.

A scripted upstream is a raw TCP server that answers every request with exactly the bytes (and
pauses) a test gives it, and counts what the provider did with its connections: how many it
opened, how many requests came, how many it closed while an answer was still being written. The
factory builds providers the way the gateway does (a config entry, validated, then
``router.fleet.wiring.build_providers``), so a provider kind is tested as it is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from providers.base import Provider, UpstreamRequest
from router.config import parse_config
from router.fleet.pricing import PriceMap
from router.fleet.wiring import build_providers

Step = bytes | float  # bytes to write, or seconds to pause
MODEL = "m1"  # the public model name every scripted backend serves
KEY_ENV = "FEDROUTER_CONTRACT_UPSTREAM_KEY"  # the upstream key, given by reference as config requires
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
DONE = b"data: [DONE]\n\n"
MESSAGES = [{"role": "user", "content": "hello"}]


# -- the bytes a script is made of ----------------------------------------------------------------


def chunk_event(text: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {"content": text} if text is not None else {}
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def json_answer(body: Mapping[str, Any] | bytes, status: bytes = b"200 OK", *, keep_alive: bool = False) -> bytes:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    connection = b"keep-alive" if keep_alive else b"close"
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n%s" % (
        status,
        len(raw),
        connection,
        raw,
    )


def chunked_sse(*events: bytes) -> list[Step]:
    """A keep-alive stream: the events in chunked encoding, ended by the last, empty chunk."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return [head, *(b"%x\r\n%s\r\n" % (len(e), e) for e in events), b"0\r\n\r\n"]


def error_answer(status: bytes, message: str, kind: str = "invalid_request_error", param: str | None = None) -> bytes:
    error = {"message": message, "type": kind, "param": param, "code": None}
    return json_answer({"error": error}, status=status)


ANSWER: Mapping[str, Any] = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m1",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}


# -- the upstream -----------------------------------------------------------------------------------


class Scripted:
    """Answers each request with ``steps``; then closes the connection, or with ``keep_alive``
    waits for the next request on it. While it writes or pauses it watches the connection, so
    that it sees (``peer_closed``) a provider that hangs up in the middle of an answer."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.keep_alive = False
        self.requests = 0
        self.connections = 0
        self.peer_closed = 0  # connections the provider closed before the answer was complete
        self.bodies: list[bytes] = []
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            early: bytes | None = b""
            while early is not None:
                early = await self._answer_one(reader, writer, early)
                if not self.keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, early: bytes
    ) -> bytes | None:
        """One exchange (``early``: the first bytes of its request, read already); the bytes of
        the next request read meanwhile, or None if the peer left before or during this one."""
        try:
            head = early + await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # a kept-alive connection the provider closed between requests
        length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        self.bodies.append(await reader.readexactly(int(length.group(1)) if length else 0))
        self.requests += 1
        writing = asyncio.ensure_future(self._write(writer))
        watching = asyncio.ensure_future(reader.read(1))  # b"" (or a reset) once the peer hangs up
        await asyncio.wait({writing, watching}, return_when=asyncio.FIRST_COMPLETED)
        watching.cancel()
        [seen] = await asyncio.gather(watching, return_exceptions=True)
        if (
            seen == b""
            or isinstance(seen, ConnectionError)
            or isinstance(writing.exception() if writing.done() else None, ConnectionError)
        ):
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
            self.peer_closed += 1
            return None
        await writing
        return seen if isinstance(seen, bytes) else b""

    async def _write(self, writer: asyncio.StreamWriter) -> None:
        for step in list(self.steps):
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            else:
                await asyncio.sleep(step)

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def stop(self, server: asyncio.Server) -> None:
        server.close()
        for task in list(self._tasks):  # answers still pausing
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.contextmanager
def unanswered_port(*, listen: bool) -> Iterator[int]:
    """A loopback port where connecting fails at once (``listen=False``: nothing listens) or
    hangs (``listen=True``: a listener whose accept queue is full, so Linux drops new SYNs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        if listen:
            listener.listen(0)
            for _ in range(3):  # more than a backlog of 0 holds: the queue is full
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
        else:
            listener.close()
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def until(check: Callable[[], bool], within: float = 3.0) -> bool:
    """Whether ``check()`` became true within ``within`` seconds. Polled: what it reads is counted
    by a server on another thread's loop, which has no event to wait for here."""
    for _ in range(round(within / 0.01)):
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


# -- one parameter per provider kind -----------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How a provider kind is pointed at a scripted OpenAI-compatible upstream (the config entry
    that does it), and the one documented trait in which kinds differ.

    ``relays``: the kind passes the upstream's bytes on as they came (the answer's body, an error
    body, each event's data) and leaves judging them to the gateway's relay; a kind that does not
    parses every answer and event itself, and fails (retryably) on one it cannot read.
    """

    name: str
    entry: Callable[[str], dict[str, Any]]  # the upstream's base URL -> the kind's own config keys
    relays: bool

    def config(self, base_url: str, name: str = "scripted", **timeouts: float) -> dict[str, Any]:
        limits = {"connect": 2.0, "first_token": 5.0, "idle": 5.0, "total": 30.0, **timeouts}
        common = {"name": name, "class": "datacenter", "price": {"input": 0, "output": 0}, "timeouts": limits}
        return {**common, "api_key": f"env:{KEY_ENV}", **self.entry(base_url)}

    def build(self, base_url: str, **timeouts: float) -> Provider:
        raw = {"backends": [self.config(base_url, **timeouts)], "tenants": [{"name": "t", "policy": "balanced"}]}
        [provider] = build_providers(parse_config(raw), PriceMap()).values()
        return provider

    def request(self, provider: Provider, *, stream: bool = False, **extra: Any) -> UpstreamRequest:
        """A chat request as dispatch hands it to this provider: the model by the backend's name."""
        payload = {"model": provider.info.models[MODEL], "messages": MESSAGES, "max_tokens": 4, **extra}
        if stream:
            payload |= {"stream": True, "stream_options": {"include_usage": True}}
        return UpstreamRequest("chat/completions", payload, orjson.dumps(payload))


# Adding a provider kind to providers.registry means adding its line here (a test checks it).
KINDS: Mapping[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("openai", lambda url: {"type": "openai", "base_url": url, "models": [MODEL]}, relays=True),
        # litellm's OpenAI route: the same wire format, read by the openai SDK and rebuilt by litellm.
        Kind(
            "litellm",
            lambda url: {"type": "litellm", "base_url": url, "models": {MODEL: f"openai/{MODEL}"}},
            relays=False,
        ),
    )
}

PARSERS = frozenset(name for name, kind in KINDS.items() if not kind.relays)  # kinds that rebuild what they read


async def warm_up() -> None:
    """An answer and a stream from every kind: a kind's first call may spend seconds importing
    (litellm's does), which would eat into the deadlines of whichever case came first."""
    upstream = Scripted()
    server = await upstream.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-warm-up")
        for kind in KINDS.values():
            provider = kind.build(upstream.base_url)
            upstream.steps = [json_answer(ANSWER)]
            await provider.complete(kind.request(provider))
            upstream.steps = [SSE_HEAD, chunk_event("Hi", finish="stop"), DONE]
            stream = await provider.stream(kind.request(provider, stream=True))
            assert [event async for event in stream]
            await stream.aclose()
            await provider.close()
    await upstream.stop(server)


# -- cases a kind is left out of, each with its reason --------------------------------------------

# Set to run the cases left out for a provider defect not fixed yet (they fail until it is).
RUN_PENDING_ENV = "FEDROUTER_CONTRACT_PENDING"


def kinds(*, pending: Mapping[str, str] | None = None, omit: Mapping[str, str] | None = None) -> Any:
    """``provider_kind`` narrowed, each kind left out with its reason: ``omit``, a kind this case
    does not apply to or is tested for elsewhere; ``pending``, a kind a known provider defect fails
    (reported; FEDROUTER_CONTRACT_PENDING=1 runs them anyway). Reasons are data, so the suite
    reports no skips."""
    left_out = {**(omit or {}), **({} if os.environ.get(RUN_PENDING_ENV) else (pending or {}))}
    unknown = set(left_out) - set(KINDS)
    assert not unknown, f"no such provider kinds: {unknown}"
    assert all(reason.strip() for reason in left_out.values()), "a kind is left out only with its reason"
    return pytest.mark.parametrize("provider_kind", [k for k in KINDS if k not in left_out], indirect=True)


# Defects of providers/openai_compat.py found by this suite; each names the cases it fails.

# What litellm itself cannot do, which its adapter cannot mend; each names the cases it fails.
LITELLM_CANNOT_SEND_ODD_SHAPES = (
    "litellm cannot forward a message outside OpenAI's schema (content nested in lists): it fails while "
    "translating it, before anything is sent, where an OpenAI-compatible backend is given it as it came"
)
