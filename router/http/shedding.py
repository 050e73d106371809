"""Load shedding: beyond a gateway-wide cap on inference requests in flight, new ones get an
OpenAI-shaped 503 with ``retry-after`` at once, while those already in flight (streams included,
until their last byte) carry on untouched.

Refusing early and cheaply keeps the gateway's latency for the requests it does accept, and
tells well-behaved clients (the OpenAI SDKs honour ``retry-after``) when to come back. There is
one shedder per app, held by its inference entry (``router.http.entry``), whichever server runs it.
"""

from __future__ import annotations

import math

from router.errors import error_body
from router.pipeline.answer import Answer

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
