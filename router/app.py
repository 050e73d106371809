"""create_app: builds every part of the gateway for one config, with no global state."""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp

from providers.base import Provider
from router.api import admin, admin_tenants, dashboard, health, openai, route, usage
from router.config import FederationConfig
from router.errors import GatewayError, InvalidRequest, RouteNotFound
from router.fleet.backend_stats import EjectionPolicy, StatsBook
from router.fleet.pricing import PriceMap
from router.fleet.wiring import build_providers, stream_usage_backends, unpriced
from router.http.asgi import FastPath, GatewayApp, RequestIdMiddleware, answer_response, error_response
from router.http.entry import SERVER_ERROR_ANSWER, Entry
from router.ledger import open_ledger
from router.ledger.base import Unawaited
from router.metrics import Metrics
from router.pipeline.dispatch import Dispatcher
from router.pipeline.gateway import Gateway
from router.pipeline.planner import Planner
from router.pipeline.tokens import TokenCounter
from router.settings import Settings
from router.state import open_store
from router.tenancy.admission import open_admission
from router.tenancy.keys import KeyStore
from router.tenancy.tenants import Tenancy

log = logging.getLogger("fedrouter")


_error_response = error_response


async def _on_gateway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error_response(RouteNotFound(f"Unknown request URL: {request.method} {request.url.path}."))
    err = GatewayError(str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {}))  # 405's Allow
    err.type, err.should_retry = "invalid_request_error", False
    return _error_response(err)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    return _error_response(InvalidRequest(f"Invalid request: {param}: {first['msg']}", param=param))


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    response = answer_response(SERVER_ERROR_ANSWER)
    response.raw_headers.append((b"connection", b"close"))  # whatever failed may have left the exchange unsound
    return response


def _front(inner: ASGIApp, entry: Entry) -> ASGIApp:
    """Outermost first: the request id, then the inference fast path (which sheds)."""
    return RequestIdMiddleware(FastPath(inner, entry), entry.ids)


def _mount_routes(app: FastAPI) -> None:
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(admin_tenants.router)
    app.include_router(route.router)
    app.include_router(usage.router)
    app.include_router(usage.admin_router)
    app.include_router(health.router)
    app.include_router(dashboard.router)


def create_app(config: FederationConfig, settings: Settings | None = None) -> GatewayApp:
    settings = settings or Settings()
    metrics = Metrics()
    prices = PriceMap()
    providers = build_providers(config, prices)
    for warning in unpriced(p.info for p in providers.values()):
        log.warning("%s", warning)
    stats = _stats_book(config, settings)
    keys = KeyStore(settings.keys_path(), settings.key_cache_s)
    ledger = open_ledger(settings.ledger, settings.ledger_retention_days)
    if not settings.ledger_durable:
        ledger = Unawaited(ledger)
    tokens = TokenCounter()
    # A request's limits and budget reservation are held at most this long by a gateway that died.
    lease_s = max(b.timeouts.total for b in config.backends) + 60.0
    admission = open_admission(settings.state, settings.state_prefix + "adm:", ledger, lease_s)
    tenancy = Tenancy(
        config, keys, settings.key_cache_s, limits_per_process=settings.workers > 1 and settings.state is None
    )
    gateway = Gateway(
        tenancy=tenancy,
        admission=admission,
        planner=_planner(config, providers, stats),
        dispatcher=Dispatcher(providers, stats, config.routing, metrics),
        stats=stats,
        ledger=ledger,
        metrics=metrics,
        tokens=tokens,
        providers=providers,
        stream_usage=stream_usage_backends(config),
        max_body_bytes=config.limits.max_body_bytes,
        totals={b.name: b.timeouts.total for b in config.backends},
    )
    entry = Entry(gateway, config.limits.max_concurrency, config.limits.write_stall_s)

    # No redirect for a trailing slash: Starlette's would send the client to its own Host header.
    app = GatewayApp(
        title="fedrouter",
        lifespan=_lifespan(gateway, keys),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.state.gateway = gateway
    app.state.entry = entry
    app.state.keys = keys
    app.state.settings = settings
    app.state.config = config
    app.state.started = time.time()
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    _mount_routes(app)
    app.set_front(lambda inner: _front(inner, entry))
    return app


def _lifespan(gateway: Gateway, keys: KeyStore) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down of the parts that hold connections, threads or files."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger, tenancy, admission, stats = gateway.ledger, gateway.tenancy, gateway.admission, gateway.stats
        await ledger.start()
        await tenancy.start()
        for entry in tenancy.entries():  # budgets start from the ledger's spend of their period
            await admission.prime(entry.config.name, list(entry.config.budgets))
        await stats.start()
        gateway.tokens.warm()
        app.state.started = time.time()
        # Start-up leaves a large heap of long-lived objects (FastAPI, pydantic, the tokenizer);
        # freezing it keeps full collections, and their pauses, away from the request path.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.close()
            await admission.close()
            await stats.close()
            await ledger.close()
            keys.close()

    return lifespan


def _planner(config: FederationConfig, providers: dict[str, Provider], stats: StatsBook) -> Planner:
    infos = (p.info for p in providers.values())
    return Planner(
        infos, stats, config.routing.exploration, random.Random(), config=config, consider=config.routing.consider
    )


def _stats_book(config: FederationConfig, settings: Settings) -> StatsBook:
    """Backend stats over the configured state store, this process being one replica of it."""
    groups: dict[str, list[str]] = {}
    for b in config.backends:
        for model in b.model_map():
            groups.setdefault(model, []).append(b.name)
    replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    store = open_store(settings.state, settings.state_prefix, replica)
    return StatsBook(
        store,
        EjectionPolicy.of(config.routing),
        groups,
        count_window_s=config.routing.retry_budget.window_s,
        # A store in this process has no other replica whose ejections could be missed.
        freshness_s=settings.state_freshness_ms / 1000 if settings.state else math.inf,
    )
