"""Load shedding: beyond a gateway-wide cap on inference requests in flight, new ones get an
OpenAI-shaped 503 with ``retry-after`` at once, while those already in flight (streams included,
until their last byte) carry on untouched.

Refusing early and cheaply keeps the gateway's latency for the requests it does accept, and
tells well-behaved clients (the OpenAI SDKs honour ``retry-after``) when to come back. There is
one shedder per app, held by its inference entry (``router.http.entry``), whichever server runs it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from router.errors import error_body
from router.http.send import whole_answer
from router.pipeline.answer import Answer


class Turning(Protocol):
    """What turning a connection away needs of its server (``router.http.protocol.Host`` has it)."""

    turned_away: int  # connections over the cap still lingering

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def max_connections(self) -> int: ...
    def status_line(self, status: int) -> bytes: ...


# A connection over the cap lingers this long after its 503, holding a descriptor meanwhile; at
# most 1/8 of the cap's number linger at once, or a fast flood of connections takes the descriptors
# the cap keeps for the backends' connections.
_TURN_AWAY_LINGER_S = 0.2
_TURN_AWAY_SHARE = 8

_BODY = error_body("The gateway is at capacity; retry shortly.", "server_error", None, "overloaded")
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"retry-after", b"1"),
    (b"x-should-retry", b"true"),
]
REFUSAL = Answer(503, _HEADERS, _BODY)
#: The answer to a connection beyond ``limits.max_connections``, which is then closed.
TOO_MANY_CONNECTIONS = Answer(
    503,
    _HEADERS,
    error_body("The gateway has too many open connections; retry shortly.", "server_error", None, "overloaded"),
)


class LoadShedder:
    """Counts inference calls from start to last byte; ``None`` as the limit sheds nothing."""

    __slots__ = ("inflight", "limit")

    def __init__(self, max_concurrency: int | None) -> None:
        self.limit: float = math.inf if max_concurrency is None else max_concurrency
        self.inflight = 0

    def admit(self) -> bool:
        """Take a place if there is one; whoever gets True calls ``leave`` once done."""
        if self.inflight >= self.limit:
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        self.inflight -= 1


def turn_away(server: Turning, transport: asyncio.Transport) -> bool:
    """Answer a connection beyond ``limits.max_connections`` 503 and close it: after a short
    linger (True; the caller drops what the client sends meanwhile), or at once in a flood."""
    answer = TOO_MANY_CONNECTIONS
    line = server.status_line(answer.status)
    transport.write(whole_answer(line, answer.headers, answer.body, keep_alive=False, request_id=None))
    if server.turned_away >= max(1, server.max_connections // _TURN_AWAY_SHARE):
        transport.close()  # the descriptor is worth more than a clean close
        return False
    server.turned_away += 1
    if transport.can_write_eof():
        transport.write_eof()

    def linger_end() -> None:
        server.turned_away -= 1
        transport.close()

    server.loop.call_later(_TURN_AWAY_LINGER_S, linger_end)
    return True
