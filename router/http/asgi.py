"""Pure ASGI layers in front of FastAPI: the request id on every response, and the inference
routes served directly, without FastAPI's routing and dependency machinery, which cost more per
request than the gateway's own work. Every other route passes through to the FastAPI app.

fedrouter's own server (``router.http.server``) answers the inference routes before any ASGI
layer; these layers serve them when the app runs under another ASGI server (uvicorn, say). Both
decide, shed and map errors through the one entry, ``router.http.entry``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import GatewayError
from router.http.body import read_body
from router.http.entry import Entry, RequestIds, error_answer, failure, inference_route
from router.http.events import EventStreamResponse, wait_disconnect
from router.http.shedding import REFUSAL
from router.pipeline.answer import Answer, StreamAnswer
from router.pipeline.responses import Route


def error_response(err: GatewayError) -> Response:
    """A GatewayError as a Starlette response, for FastAPI's exception handlers."""
    return answer_response(error_answer(err))


def answer_response(answer: Answer) -> Response:
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
    return response


class RequestIdMiddleware:
    """Gives every HTTP exchange an id, stamped on the response as x-request-id (errors too)."""

    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.ids()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class FastPath:
    """Inference through ASGI: read the body under the limit, shed, run the gateway while
    watching for the client to leave (which cancels it, and the upstream call), answer."""

    def __init__(self, app: ASGIApp, entry: Entry) -> None:
        self.app = app
        self.entry = entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = inference_route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        # The body is read before a place is taken, as fedrouter's own server does: this server
        # may set no body deadline, and a client trickling its body must hold no place meanwhile.
        try:
            body = await read_body(scope, receive, self.entry.max_body)
        except Exception as exc:  # too large, or the client left
            refused = failure(exc, scope["path"])
            if refused is not None:
                await answer_response(refused)(scope, receive, send)
            return
        shedder = self.entry.shedder
        if not shedder.admit():
            await answer_response(REFUSAL)(scope, receive, send)
            return
        try:
            try:
                result = await self._handle(scope, receive, endpoint, body)
            except Exception as exc:
                result = failure(exc, scope["path"])
            if isinstance(result, StreamAnswer):
                await EventStreamResponse(result, self.entry.write_stall_s)(scope, receive, send)
            elif result is not None:
                await answer_response(result)(scope, receive, send)
        finally:
            shedder.leave()

    async def _handle(
        self, scope: Scope, receive: Receive, endpoint: Route, body: bytes
    ) -> Answer | StreamAnswer | None:
        """The gateway's answer, or None if the client left first (its work is cancelled then)."""
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        work = asyncio.ensure_future(
            self.entry.gateway.handle(endpoint, authorization, body, scope["state"]["request_id"])
        )
        watch = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()  # the client left, or this request is being cancelled
                await asyncio.wait((work,))
        if work.cancelled():
            return None
        return work.result()


class GatewayApp(FastAPI):
    """FastAPI for the admin, health and model routes; the ASGI chain in ``front`` (request id,
    then the inference fast path) runs before FastAPI's own middleware, so inference requests pay
    for none of it. A HEAD is served as the GET it asks about; the server leaves the body out."""

    front: ASGIApp | None = None

    def set_front(self, build: Callable[[ASGIApp], ASGIApp]) -> None:
        self.front = build(functools.partial(FastAPI.__call__, self))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        if self.front is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.front(scope, receive, send)
