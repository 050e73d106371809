"""Admin routes that explain routing: a dry-run ranking, and re-reading grid carbon intensities."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from policies.base import RequestShape
from router.api.deps import AdminDep, GatewayDep
from router.errors import InvalidRequest

router = APIRouter(prefix="/admin/v1", dependencies=[AdminDep])

_CAPABILITIES = frozenset({"tools", "json_mode", "vision", "embeddings"})


@router.get("/route")
async def explain_route(
    gateway: GatewayDep,
    model: str,
    tenant: str,
    max_tokens: int = Query(default=256, ge=0),
    prompt_tokens: int = Query(default=100, ge=0),
    needs: str = "",
) -> dict[str, object]:
    """How a request of this tenant for this model would be routed now, without calling any
    backend: every candidate with its score parts and estimates, every filtered one with why."""
    who = gateway.tenancy.tenant(tenant)
    if who is None:
        raise InvalidRequest(f"Unknown tenant {tenant!r}.", param="tenant", code="unknown_tenant")
    wanted = frozenset(n for n in needs.split(",") if n)
    if not wanted <= _CAPABILITIES:
        raise InvalidRequest(
            f"Unknown capability in 'needs': {', '.join(sorted(wanted - _CAPABILITIES))}.",
            param="needs",
            code="invalid_value",
        )
    shape = RequestShape(prompt_tokens, max_tokens, wanted)
    return gateway.planner.explain(model, who, shape)


@router.post("/carbon/refresh")
async def refresh_carbon(gateway: GatewayDep) -> dict[str, object]:
    """Re-read ``carbon.intensity_file`` (e.g. after a job rewrote it with live grid data)."""
    try:
        zones = await asyncio.to_thread(gateway.planner.reload_carbon)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="carbon.intensity_file", code="invalid_file") from None
    gateway.planner.apply_carbon()
    return {"zones_from_file": zones}
