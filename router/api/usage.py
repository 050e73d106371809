"""Usage exports over HTTP: a tenant's own (tenant key), any tenant's and operator payouts (admin key).

A tenant key exports only its own tenant: the tenant comes from the key, and there is no
parameter to name another. Bodies stream as the ledger is read, so a long range costs no memory.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Query
from starlette.responses import StreamingResponse

from router.api.deps import AdminDep, GatewayDep
from router.api.openai import TenantDep
from router.errors import InvalidRequest
from router.ledger.base import out_of_range
from router.ledger.exports import (
    FORMATS,
    GRANULARITIES,
    MEDIA_TYPES,
    PAYOUT_FORMATS,
    Format,
    Granularity,
    export,
    export_payouts,
    usage_rows,
)

router = APIRouter(prefix="/v1")
admin_router = APIRouter(prefix="/admin/v1", dependencies=[AdminDep])


@dataclass(frozen=True, slots=True)
class Period:
    start: date
    end: date


def _day(value: str | None, param: str) -> date:
    if value is None:
        raise InvalidRequest(
            f"Missing required parameter: '{param}' (an ISO date, YYYY-MM-DD).",
            param=param,
            code="missing_required_parameter",
        )
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{param}': {value!r} is not an ISO date (YYYY-MM-DD).", param=param, code="invalid_value"
        ) from None
    if (why := out_of_range(day)) is not None:
        raise InvalidRequest(f"Invalid '{param}': {why}.", param=param, code="invalid_value")
    return day


def _period(
    start: Annotated[str | None, Query(alias="from")] = None, end: Annotated[str | None, Query(alias="to")] = None
) -> Period:
    period = Period(_day(start, "from"), _day(end, "to"))
    if period.start > period.end:
        raise InvalidRequest(
            f"'from' ({period.start}) is after 'to' ({period.end}).", param="from", code="invalid_value"
        )
    return period


def _choice(value: str, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        raise InvalidRequest(
            f"Invalid '{param}': {value!r}; expected one of {', '.join(allowed)}.", param=param, code="invalid_value"
        )
    return value


PeriodDep = Annotated[Period, Depends(_period)]
FormatQuery = Annotated[str, Query(alias="format")]


def _attachment(body: AsyncIterator[bytes], fmt: str, *parts: str) -> StreamingResponse:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))
    ext = "jsonl" if fmt == "jsonl" else "csv"
    return StreamingResponse(
        body, media_type=MEDIA_TYPES[fmt], headers={"content-disposition": f'attachment; filename="{name}.{ext}"'}
    )


def _usage_export(
    gateway: GatewayDep, tenant: str | None, period: Period, fmt: str, granularity: str
) -> StreamingResponse:
    fmt = _choice(fmt, FORMATS, "format")
    granularity = _choice(granularity, GRANULARITIES, "granularity")
    rows = usage_rows(gateway.ledger, tenant, period.start, period.end, cast(Granularity, granularity))
    body = export(rows, cast(Format, fmt), cast(Granularity, granularity))
    return _attachment(body, fmt, "usage", tenant or "all", str(period.start), str(period.end), granularity)


@router.get("/usage/export")
async def tenant_export(
    gateway: GatewayDep, tenant: TenantDep, period: PeriodDep, fmt: FormatQuery = "csv", granularity: str = "request"
) -> StreamingResponse:
    return _usage_export(gateway, tenant.name, period, fmt, granularity)


@admin_router.get("/usage/export")
async def admin_export(
    gateway: GatewayDep,
    period: PeriodDep,
    tenant: str | None = None,
    fmt: FormatQuery = "csv",
    granularity: str = "request",
) -> StreamingResponse:
    if tenant is not None and gateway.tenancy.tenant(tenant) is None:
        raise InvalidRequest(f"Unknown tenant {tenant!r}.", param="tenant", code="unknown_tenant")
    return _usage_export(gateway, tenant, period, fmt, granularity)


@admin_router.get("/payouts")
async def payouts(gateway: GatewayDep, period: PeriodDep, fmt: FormatQuery = "csv") -> StreamingResponse:
    fmt = _choice(fmt, PAYOUT_FORMATS, "format")
    rows = await gateway.ledger.payouts(period.start, period.end)  # one row per backend: small
    return _attachment(export_payouts(rows, cast(Format, fmt)), fmt, "payouts", str(period.start), str(period.end))
