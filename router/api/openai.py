"""The OpenAI-compatible model routes under /v1; the inference routes are served ahead of FastAPI,
by ``router.http.entry`` (through ``router.http.server`` or ``router.http.asgi``)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from router.api import catalogue
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


def _catalogue(gateway: Gateway, tenant: Tenant, created: int) -> dict[str, dict[str, object]]:
    """The caller's models, each as the catalogue lists it: only those the key may use, each
    with the backends the tenant's policy lets serve it (see router.api.catalogue)."""
    cons = gateway.planner.constraints(tenant)
    out: dict[str, dict[str, object]] = {}
    for model, profiles in sorted(gateway.planner.models_for(tenant).items()):
        kept = catalogue.usable(profiles, cons)
        if kept and gateway.tenancy.may_use(tenant, model):  # the key's model allow-list
            # The energy the router would estimate now: measured where the backend reports power.
            estimates = [gateway.planner.energy.estimate(p, gateway.stats.view(p.info.name, model)) for p in kept]
            out[model] = catalogue.model_entry(model, kept, estimates, created)
    return out


@router.get("/models")
async def list_models(request: Request, gateway: GatewayDep, tenant: TenantDep) -> Response:
    data = list(_catalogue(gateway, tenant, int(request.app.state.started)).values())
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request, gateway: GatewayDep, tenant: TenantDep) -> Response:
    body = _catalogue(gateway, tenant, int(getattr(request.app.state, "started", time.time()))).get(model)
    if body is None:
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    return Response(orjson.dumps(body), media_type="application/json")
