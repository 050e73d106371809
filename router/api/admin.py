"""Admin routes under /admin/v1, for the operator only (admin key)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from router.api.deps import AdminDep, GatewayDep, KeysDep
from router.errors import InvalidRequest

router = APIRouter(prefix="/admin/v1", dependencies=[AdminDep])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str


@router.get("/backends")
async def backends(gateway: GatewayDep) -> dict[str, object]:
    data = []
    for name, provider in gateway.providers.items():
        info = provider.info
        data.append({
            "name": name, "class": info.backend_class, "type": info.type, "zone": info.zone,
            "models": sorted(info.models), "joules_per_token": info.joules_per_token,
            "prices": {m: {"input": p[0], "output": p[1]} for m, p in info.prices.items()},
            "stats": gateway.stats.snapshot(name),
        })
    return {"object": "list", "data": data}


@router.get("/tenants")
async def tenants(gateway: GatewayDep) -> dict[str, object]:
    data = []
    for name in gateway.tenancy.names():
        tenant = gateway.tenancy.tenant(name)
        assert tenant is not None
        data.append({"name": name, "allow_volunteer": tenant.allow_volunteer,
                     "weights": tenant.policy.weights.model_dump(), "usage": await gateway.ledger.totals(name)})
    return {"object": "list", "data": data}


@router.get("/usage")
async def usage(gateway: GatewayDep, tenant: str | None = None,
                limit: int = Query(default=50, ge=1, le=1000)) -> dict[str, object]:
    if tenant is not None and gateway.tenancy.tenant(tenant) is None:
        raise InvalidRequest(f"Unknown tenant {tenant!r}.", param="tenant", code="unknown_tenant")
    return {"totals": await gateway.ledger.totals(tenant), "recent": await gateway.ledger.recent(limit, tenant)}


@router.post("/keys")
async def create_key(body: KeyCreate, gateway: GatewayDep, keys: KeysDep) -> dict[str, object]:
    if gateway.tenancy.tenant(body.tenant) is None:
        raise InvalidRequest(f"Unknown tenant {body.tenant!r}; tenants are declared in the config.",
                             param="tenant", code="unknown_tenant")
    secret, record = keys.create(body.tenant)
    return {"key": secret, "key_id": record.key_id, "tenant": record.tenant}
