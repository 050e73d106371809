"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from router.api.deps import AdminDep, GatewayDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, object]:
    return {"status": "ready", "backends": len(request.app.state.gateway.providers)}


@router.get("/metrics", dependencies=[AdminDep])
async def metrics(gateway: GatewayDep) -> Response:
    for name, provider in gateway.providers.items():
        gateway.metrics.backend_up.labels(name, provider.info.backend_class).set(
            0 if gateway.stats.view(name).ejected else 1
        )
        gateway.metrics.inflight.labels(name).set(gateway.stats.view(name).inflight)
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
