"""Admin routes under /admin/v1, for the operator only (admin key); tenants and keys are in admin_tenants."""

from __future__ import annotations

from fastapi import APIRouter, Query

from router.api.deps import AdminDep, GatewayDep
from router.errors import InvalidRequest

router = APIRouter(prefix="/admin/v1", dependencies=[AdminDep])


@router.get("/backends")
async def backends(gateway: GatewayDep) -> dict[str, object]:
    data = []
    for name, provider in gateway.providers.items():
        info = provider.info
        data.append(
            {
                "name": name,
                "class": info.backend_class,
                "type": info.type,
                "zone": info.zone,
                "models": sorted(info.models),
                "joules_per_token": info.joules_per_token,
                "prices": {m: {"input": p[0], "output": p[1]} for m, p in info.prices.items()},
                "stats": gateway.stats.snapshot(name),
            }
        )
    return {"object": "list", "data": data}


@router.get("/usage")
async def usage(
    gateway: GatewayDep, tenant: str | None = None, limit: int = Query(default=50, ge=1, le=1000)
) -> dict[str, object]:
    if tenant is not None and gateway.tenancy.tenant(tenant) is None:
        raise InvalidRequest(f"Unknown tenant {tenant!r}.", param="tenant", code="unknown_tenant")
    return {"totals": await gateway.ledger.totals(tenant), "recent": await gateway.ledger.recent(limit, tenant)}
