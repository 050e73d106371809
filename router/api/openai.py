"""The OpenAI-compatible model routes under /v1; the inference routes are served ahead of FastAPI,
by ``router.http.entry`` (through ``router.http.server`` or ``router.http.asgi``)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from router.api.deps import GatewayDep
from router.errors import ModelNotFound
from router.pipeline.gateway import Gateway
from router.tenancy.tenants import Tenant

router = APIRouter(prefix="/v1")


async def _tenant(request: Request, gateway: GatewayDep) -> Tenant:
    return await gateway.tenancy.authenticate(request.headers.get("authorization"))


TenantDep = Annotated[Tenant, Depends(_tenant)]


async def _served_ahead() -> Response:
    """Never reached: a POST to an inference path is answered ahead of FastAPI, by the one
    inference entry (router.http.entry), on the decoded path as here. Declared for the 405 that
    other methods get."""
    raise RuntimeError("inference routes are served by router.http.entry")


for _path in ("/chat/completions", "/completions", "/embeddings"):
    router.add_api_route(_path, _served_ahead, methods=["POST"])


def _model_object(model: str, classes: list[str], created: int) -> dict[str, object]:
    return {"id": model, "object": "model", "created": created, "owned_by": "fedrouter:" + "+".join(classes)}


def _visible(gateway: Gateway, tenant: Tenant) -> dict[str, list[str]]:
    return {
        m: sorted({i.backend_class for i in infos})
        for m, infos in gateway.planner.models_for(tenant).items()
        if gateway.tenancy.may_use(tenant, m)
    }  # the key's model allow-list


@router.get("/models")
async def list_models(request: Request, gateway: GatewayDep, tenant: TenantDep) -> Response:
    created = int(request.app.state.started)
    data = [_model_object(m, c, created) for m, c in sorted(_visible(gateway, tenant).items())]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request, gateway: GatewayDep, tenant: TenantDep) -> Response:
    classes = _visible(gateway, tenant).get(model)
    if classes is None:
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    body = _model_object(model, classes, int(getattr(request.app.state, "started", time.time())))
    return Response(orjson.dumps(body), media_type="application/json")
