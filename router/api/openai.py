"""The OpenAI-compatible model routes under /v1; the inference routes are served by
``router.http.asgi`` (and ``router.http.server``), ahead of FastAPI."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from router.api.deps import GatewayDep
from router.errors import ModelNotFound
from router.http.asgi import infer
from router.pipeline.gateway import Gateway
from router.tenancy.tenants import Tenant

router = APIRouter(prefix="/v1")


async def _tenant(request: Request, gateway: GatewayDep) -> Tenant:
    return await gateway.tenancy.authenticate(request.headers.get("authorization"))


TenantDep = Annotated[Tenant, Depends(_tenant)]


# Declared here for their 405 on other methods; a POST is answered ahead of FastAPI, by the fast path.
@router.post("/chat/completions")
async def chat_completions(request: Request, gateway: GatewayDep) -> Response:
    return await infer(request, gateway, "chat/completions")


@router.post("/completions")
async def completions(request: Request, gateway: GatewayDep) -> Response:
    return await infer(request, gateway, "completions")


@router.post("/embeddings")
async def embeddings(request: Request, gateway: GatewayDep) -> Response:
    return await infer(request, gateway, "embeddings")


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
