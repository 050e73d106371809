"""create_app: builds every part of the gateway for one config, with no global state."""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.api import admin, dashboard, health, openai
from router.backend_stats import StatsBook
from router.config import FederationConfig
from router.dispatch import Dispatcher
from router.errors import GatewayError, InvalidRequest, RouteNotFound, error_body
from router.federation import build_providers, stream_usage_backends
from router.gateway import Gateway
from router.keys import KeyStore
from router.ledger import open_ledger, sqlite_path
from router.metrics import Metrics
from router.pricing import PriceMap
from router.routing import Planner
from router.settings import Settings
from router.tenancy import Tenancy
from router.tokens import TokenCounter

log = logging.getLogger("fedrouter")


class RequestIdMiddleware:
    """Gives every HTTP exchange an id, stamped on the response as x-request-id (errors too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _error_response(err: GatewayError) -> Response:
    return Response(err.body(), status_code=err.status, media_type="application/json",
                    headers=err.response_headers())


async def _on_gateway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error_response(RouteNotFound(f"Unknown request URL: {request.method} {request.url.path}."))
    err = GatewayError(str(exc.detail), status=exc.status_code)
    err.type, err.should_retry = "invalid_request_error", False
    return _error_response(err)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    return _error_response(InvalidRequest(f"Invalid request: {param}: {first['msg']}", param=param))


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return Response(error_body("The server had an error while processing your request.", "server_error"),
                    status_code=500, media_type="application/json")


def create_app(config: FederationConfig, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db_path = sqlite_path(settings.ledger)
    metrics = Metrics()
    stats = StatsBook(config.routing.eject_after_failures, config.routing.eject_seconds)
    prices = PriceMap()
    providers = build_providers(config, prices)
    keys = KeyStore(db_path, settings.key_cache_s)
    ledger = open_ledger(settings.ledger)
    tokens = TokenCounter()
    gateway = Gateway(
        tenancy=Tenancy(config, keys),
        planner=Planner((p.info for p in providers.values()), stats, config.routing.exploration, random.Random()),
        dispatcher=Dispatcher(providers, stats, config.routing, metrics),
        stats=stats, ledger=ledger, metrics=metrics, tokens=tokens, providers=providers,
        stream_usage=stream_usage_backends(config), max_body_bytes=config.limits.max_body_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ledger.start()
        tokens.warm()
        app.state.started = time.time()
        try:
            yield
        finally:
            await gateway.close()
            await ledger.close()
            keys.close()

    app = FastAPI(title="fedrouter", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    app.state.keys = keys
    app.state.settings = settings
    app.state.config = config
    app.state.started = time.time()
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.add_middleware(RequestIdMiddleware)
    return app
