"""Pure ASGI layers in front of FastAPI: the request id on every response, and the inference
routes served directly, without FastAPI's routing and dependency machinery, which cost more per
request than the gateway's own work. Every other route passes through to the FastAPI app.

``router.http.server`` answers the inference routes before any ASGI layer; these layers serve them
when the app runs under another ASGI server (uvicorn, say)."""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
from collections.abc import Callable

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from providers.base import Endpoint
from router.errors import GatewayError, error_body
from router.pipeline.body import read_body
from router.pipeline.gateway import Gateway

log = logging.getLogger("fedrouter")

INFERENCE_ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


def error_response(err: GatewayError) -> Response:
    return Response(err.body(), status_code=err.status, media_type="application/json", headers=err.response_headers())


class RequestIdMiddleware:
    """Gives every HTTP exchange an id, stamped on the response as x-request-id (errors too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # A random per-process prefix and a counter: unique across replicas without a system
        # call per request (ids name ledger records; they need not be unguessable).
        self._prefix = "req_" + secrets.token_hex(8)
        self._seq = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._prefix}{next(self._seq):08x}"
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def infer(request: Request, gateway: Gateway, endpoint: Endpoint) -> Response:
    """An inference request through ASGI: its body read under the limit, then the gateway."""
    body = await read_body(request, gateway.max_body_bytes)
    return await gateway.handle(
        endpoint, request.headers.get("authorization"), body, request.scope["state"]["request_id"]
    )


class FastPath:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http_post = scope["type"] == "http" and scope["method"] == "POST"
        endpoint = INFERENCE_ROUTES.get(scope["path"]) if http_post else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await infer(Request(scope, receive), self.gateway, endpoint)
        except GatewayError as err:
            response = error_response(err)
        except ClientDisconnect:
            return  # the client left while sending its body: there is no one to answer
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            response = Response(
                error_body("The server had an error while processing your request.", "server_error"),
                status_code=500,
                media_type="application/json",
            )
        await response(scope, receive, send)


class GatewayApp(FastAPI):
    """FastAPI for the admin, health and model routes; the ASGI chain in ``front`` (request id,
    load shedding, fast path) runs before FastAPI's own middleware, so inference requests pay
    for none of it."""

    front: ASGIApp | None = None

    def set_front(self, build: Callable[[ASGIApp], ASGIApp]) -> None:
        self.front = build(functools.partial(FastAPI.__call__, self))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.front(scope, receive, send)
