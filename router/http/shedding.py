"""Load shedding: beyond a gateway-wide cap on inference requests in flight, new ones get an
OpenAI-shaped 503 with ``retry-after`` at once, while those already in flight (streams included,
until their last byte) carry on untouched.

Refusing early and cheaply keeps the gateway's latency for the requests it does accept, and
tells well-behaved clients (the OpenAI SDKs honour ``retry-after``) when to come back.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from router.errors import error_body

_BODY = error_body("The gateway is at capacity; retry shortly.", "server_error", None, "overloaded")
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"x-should-retry", b"true"),
]


class LoadShedder:
    """ASGI middleware counting inference calls (``POST /v1/...``) from start to last byte."""

    def __init__(self, app: ASGIApp, max_concurrency: int) -> None:
        self.app = app
        self.limit = max_concurrency
        self.inflight = 0

    @staticmethod
    def refusal() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The answer to a request beyond the cap: status, headers, body."""
        return 503, _HEADERS, _BODY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
