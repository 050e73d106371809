"""Tenants and their API keys under /admin/v1, for the operator only (admin key).

Tenants: list, create, show (with each budget's live spend and reservations), change and delete
the ones created here; tenants declared in the config file are read-only (see router.tenancy.tenants).
Keys: create (the secret is in this answer only), list and show (never the secret or its hash),
revoke, rotate (a new secret; the old one stops working now or after ``grace_seconds``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.base import PolicySpec
from router.api.deps import AdminDep, GatewayDep, KeysDep
from router.config import Budget, RateLimits, TenantConfig
from router.errors import GatewayError, InvalidRequest
from router.pipeline.gateway import Gateway
from router.tenancy.keys import KeyRecord
from router.tenancy.tenants import TenantEntry, check_key_limits, unknown_tenant

router = APIRouter(prefix="/admin/v1", dependencies=[AdminDep])

_MAX_GRACE_S = 30 * 86400


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantPatch(_Body):
    policy: str | PolicySpec | None = None
    allow_volunteer: bool | None = None
    limits: RateLimits | None = None
    budgets: list[Budget] | None = None
    fallback_models: dict[str, list[str]] | None = None


class KeyCreate(_Body):
    tenant: str
    name: str | None = Field(default=None, max_length=64)
    expires_at: float | None = Field(default=None, strict=True, allow_inf_nan=False, description="unix seconds")
    models: list[str] | None = Field(default=None, min_length=1)
    limits: RateLimits | None = None


class KeyRotate(_Body):
    grace_seconds: float = Field(default=0.0, ge=0, le=_MAX_GRACE_S, strict=True, allow_inf_nan=False)


class KeyNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"
    should_retry = False


def _known_models(gateway: Gateway) -> set[str]:
    return {m for p in gateway.providers.values() for m in p.info.models}


def _check_models(gateway: Gateway, models: list[str] | None, param: str) -> None:
    unknown = sorted(set(models or ()) - _known_models(gateway))
    if unknown:
        raise InvalidRequest(
            f"Unknown model(s) in '{param}': {', '.join(unknown)}.", param=param, code="model_not_found"
        )


def _check_tenant(gateway: Gateway, config: TenantConfig) -> None:
    for model, fallbacks in config.fallback_models.items():
        _check_models(gateway, [model, *fallbacks], "fallback_models")


async def _tenant_view(gateway: Gateway, entry: TenantEntry, live: bool) -> dict[str, Any]:
    cfg = entry.config
    budgets: list[dict[str, Any]] = [b.model_dump() for b in cfg.budgets]
    if live:
        budgets = await gateway.admission.budgets(cfg.name, list(cfg.budgets))
    return {
        "object": "tenant",
        "name": cfg.name,
        "source": entry.source,
        "allow_volunteer": cfg.allow_volunteer,
        "policy": cfg.policy if isinstance(cfg.policy, str) else cfg.policy.model_dump(mode="json"),
        "weights": entry.tenant.policy.weights.model_dump(),
        "limits": cfg.limits.model_dump(exclude_none=True),
        "budgets": budgets,
        "usage": await gateway.ledger.totals(cfg.name),
    }


def _entry(gateway: Gateway, name: str) -> TenantEntry:
    entry = gateway.tenancy.entry(name)
    if entry is None:
        raise unknown_tenant(name)
    return entry


@router.get("/tenants")
async def list_tenants(gateway: GatewayDep) -> dict[str, object]:
    return {"object": "list", "data": [await _tenant_view(gateway, e, False) for e in gateway.tenancy.entries()]}


@router.post("/tenants")
async def create_tenant(body: TenantConfig, gateway: GatewayDep) -> dict[str, object]:
    _check_tenant(gateway, body)
    entry = await gateway.tenancy.create(body)
    return await _tenant_view(gateway, entry, True)


@router.get("/tenants/{name}")
async def get_tenant(name: str, gateway: GatewayDep) -> dict[str, object]:
    return await _tenant_view(gateway, _entry(gateway, name), True)


@router.patch("/tenants/{name}")
async def update_tenant(name: str, body: TenantPatch, gateway: GatewayDep) -> dict[str, object]:
    current = _entry(gateway, name).config
    merged = {**current.model_dump(exclude_defaults=True), **body.model_dump(exclude_unset=True)}
    try:
        config = TenantConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"Invalid request: {param}: {first['msg']}", param=param) from None
    _check_tenant(gateway, config)
    return await _tenant_view(gateway, await gateway.tenancy.update(config), True)


@router.delete("/tenants/{name}")
async def delete_tenant(name: str, gateway: GatewayDep) -> dict[str, object]:
    await gateway.tenancy.delete(name)
    return {"object": "tenant.deleted", "name": name, "deleted": True}


@router.post("/keys")
async def create_key(body: KeyCreate, gateway: GatewayDep, keys: KeysDep) -> dict[str, object]:
    entry = gateway.tenancy.entry(body.tenant)
    if entry is None:
        raise InvalidRequest(f"Unknown tenant {body.tenant!r}.", param="tenant", code="unknown_tenant")
    now = time.time()
    if body.expires_at is not None and body.expires_at <= now:
        raise InvalidRequest(
            "'expires_at' is in the past; give unix seconds in the future.", param="expires_at", code="invalid_value"
        )
    _check_models(gateway, body.models, "models")
    check_key_limits(entry.config.limits, body.limits)
    gateway.tenancy.check_limits_hold(key=body.limits)
    secret, record = await keys.run(
        keys.create, body.tenant, name=body.name, expires_at=body.expires_at, models=body.models, limits=body.limits
    )
    return {**record.public(now), "key": secret}


@router.get("/keys")
async def list_keys(keys: KeysDep, gateway: GatewayDep, tenant: str | None = Query(default=None)) -> dict[str, object]:
    if tenant is not None and gateway.tenancy.entry(tenant) is None:
        raise unknown_tenant(tenant, "tenant")
    now = time.time()
    return {"object": "list", "data": [r.public(now) for r in await keys.run(keys.list_keys, tenant)]}


async def _key(keys: KeysDep, key_id: str) -> KeyRecord:
    record = await keys.run(keys.get, key_id)
    if record is None:
        raise KeyNotFound(f"No API key with id {key_id!r}.", param="key_id")
    return record


@router.get("/keys/{key_id}")
async def get_key(key_id: str, keys: KeysDep) -> dict[str, object]:
    return (await _key(keys, key_id)).public(time.time())


def _revoked(record: KeyRecord) -> InvalidRequest:
    return InvalidRequest(f"API key {record.key_id} is revoked already.", param="key_id", code="key_revoked")


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, keys: KeysDep) -> dict[str, object]:
    record = await _key(keys, key_id)
    revoked = await keys.run(keys.revoke, key_id)
    if revoked is None:
        raise _revoked(record)
    return revoked.public(time.time())


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: str, keys: KeysDep, body: KeyRotate | None = None) -> dict[str, object]:
    record = await _key(keys, key_id)
    rotated = await keys.run(keys.rotate, key_id, (body or KeyRotate()).grace_seconds)
    if rotated is None:
        raise _revoked(record)
    secret, new = rotated
    now = time.time()
    old = await keys.run(keys.get, key_id)
    return {**new.public(now), "key": secret, "replaces": old.public(now) if old else None}
