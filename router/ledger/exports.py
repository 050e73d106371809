"""Billing exports: usage as CSV, JSON Lines or FOCUS 1.2, and operator payouts, written as they stream.

Writers take an async iterator of ledger rows (events, or daily rollups) and yield bytes in
chunks of about 64 KiB, so an export of any range runs in constant memory behind a
StreamingResponse or into a file. Money and energy go out as plain decimals (no exponent).

FOCUS (the FinOps Open Cost and Usage Specification) 1.2: every Mandatory column is present,
plus the conditional ones that apply to metered inference, plus ours with the ``x_`` prefix the
spec reserves for extensions. The gateway operator is the provider and invoice issuer; the
backend that served a request is its publisher; a tenant is a billing account and an API key a
sub-account. Events that were not billed (failed retried or losing hedged attempts) appear with
zero cost, so operators can see the consumption and the costs still add up to the invoice.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import orjson

from router.ledger.base import COLUMNS, PAYOUT_COLUMNS, ROLLUP_COLUMNS, Ledger

Format = Literal["csv", "jsonl", "focus"]
Granularity = Literal["request", "daily"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "focus")
PAYOUT_FORMATS: tuple[Format, ...] = ("csv", "jsonl")
GRANULARITIES: tuple[Granularity, ...] = ("request", "daily")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson", "focus": "text/csv; charset=utf-8"}

FOCUS_MANDATORY: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
)
FOCUS_OPTIONAL: tuple[str, ...] = (
    "ChargeFrequency",
    "ConsumedQuantity",
    "ConsumedUnit",
    "RegionId",
    "RegionName",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
)
FOCUS_CUSTOM: tuple[str, ...] = (
    "x_BackendClass",
    "x_Zone",
    "x_EnergyWh",
    "x_CarbonGramsCO2e",
    "x_EnergyProvenance",
    "x_TokensIn",
    "x_TokensOut",
    "x_Backend",
    "x_Model",
    "x_RequestId",
    "x_EventKind",
)
FOCUS_COLUMNS: tuple[str, ...] = (*FOCUS_MANDATORY, *FOCUS_OPTIONAL, *FOCUS_CUSTOM)
FOCUS_DECIMALS = frozenset(
    {
        "BilledCost",
        "ContractedCost",
        "EffectiveCost",
        "ListCost",
        "PricingQuantity",
        "ConsumedQuantity",
        "x_EnergyWh",
        "x_CarbonGramsCO2e",
    }
)

# Columns written as plain decimals; other floats (timestamps, latencies) keep their shortest form.
_DECIMALS = FOCUS_DECIMALS | {
    c
    for c in (*COLUMNS, *ROLLUP_COLUMNS, *PAYOUT_COLUMNS)
    if c.endswith(("cost_usd", "revenue_usd", "energy_wh", "carbon_g"))
}
_ISSUER = "fedrouter"
_CHUNK = 64 * 1024


def usage_rows(
    ledger: Ledger, tenant: str | None, start: date, end: date, granularity: Granularity
) -> AsyncIterator[dict[str, Any]]:
    """Per request: the raw events; daily: the rollups (which outlive pruned events)."""
    if granularity == "daily":
        return ledger.rollups(tenant, start, end)
    return ledger.events(tenant, start, end)


def export(rows: AsyncIterator[Mapping[str, Any]], fmt: Format, granularity: Granularity) -> AsyncIterator[bytes]:
    if fmt == "jsonl":
        return _jsonl(rows)
    if fmt == "focus":
        return _csv(_focus(rows, granularity), FOCUS_COLUMNS)
    return _csv(rows, COLUMNS if granularity == "request" else ROLLUP_COLUMNS)


def export_payouts(rows: Iterable[Mapping[str, Any]], fmt: Format) -> AsyncIterator[bytes]:
    async def each() -> AsyncIterator[Mapping[str, Any]]:
        for row in rows:
            yield row

    return _jsonl(each()) if fmt == "jsonl" else _csv(each(), PAYOUT_COLUMNS)


def decimal_text(x: float | int) -> str:
    """A plain decimal: 12 places (a pico-dollar) is far below any price, and never an exponent."""
    return f"{x:.12f}" if isinstance(x, float) else str(x)


async def _jsonl(rows: AsyncIterator[Mapping[str, Any]]) -> AsyncIterator[bytes]:
    buf = bytearray()
    async for row in rows:
        decision = row.get("decision")
        # The decision is JSON already: embedded as it is, not parsed and re-serialised.
        out = {**row, "decision": orjson.Fragment(decision)} if isinstance(decision, str) else row
        buf += orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
        if len(buf) >= _CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


async def _csv(rows: AsyncIterator[Mapping[str, Any]], columns: tuple[str, ...]) -> AsyncIterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    plain = [c in _DECIMALS for c in columns]
    async for row in rows:
        writer.writerow([_cell(row.get(c), p) for c, p in zip(columns, plain, strict=True)])
        if out.tell() >= _CHUNK:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue().encode()


def _cell(value: Any, plain_decimal: bool) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if plain_decimal:
        return decimal_text(value)
    if isinstance(value, str):
        return neutral(value)
    return value


# A spreadsheet reads a cell that begins with one of these as a formula (OWASP's CSV injection):
# tenant, key and model names reach the exports from clients and admins.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutral(text: str) -> str:
    """The text as a spreadsheet shows it and never runs it: one that would start a formula gets a
    leading single quote. A number written as text (``-0.5``) is left a number."""
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


async def _focus(rows: AsyncIterator[Mapping[str, Any]], granularity: Granularity) -> AsyncIterator[dict[str, Any]]:
    async for row in rows:
        if granularity == "request":
            yield focus_event(row)
        else:
            for line in focus_rollup(row):
                yield line


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _month(ts: datetime) -> tuple[str, str]:
    first = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    return _iso(first), _iso(nxt)


def _focus_common(
    tenant: str, backend: str, backend_class: str, zone: str | None, model: str, period: tuple[datetime, datetime]
) -> dict[str, Any]:
    billing_start, billing_end = _month(period[0])
    return {
        "BillingAccountId": tenant,
        "BillingAccountName": tenant,
        "BillingCurrency": "USD",
        "BillingPeriodStart": billing_start,
        "BillingPeriodEnd": billing_end,
        "ChargePeriodStart": _iso(period[0]),
        "ChargePeriodEnd": _iso(period[1]),
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeFrequency": "Usage-Based",
        "InvoiceIssuerName": _ISSUER,
        "ProviderName": _ISSUER,
        "PublisherName": backend,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceSubcategory": "Generative AI",
        "ServiceName": "LLM Inference",
        "PricingUnit": "Tokens",
        "ConsumedUnit": "Tokens",
        "RegionId": zone,
        "RegionName": zone,
        "x_BackendClass": backend_class,
        "x_Zone": zone,
        "x_Backend": backend,
        "x_Model": model,
    }


def _figures(cost: float, tokens_in: int, tokens_out: int, energy_wh: float, carbon_g: float) -> dict[str, Any]:
    tokens = tokens_in + tokens_out
    return {
        "BilledCost": cost,
        "EffectiveCost": cost,
        "ListCost": cost,
        "ContractedCost": cost,
        "PricingQuantity": tokens,
        "ConsumedQuantity": tokens,
        "x_TokensIn": tokens_in,
        "x_TokensOut": tokens_out,
        "x_EnergyWh": energy_wh,
        "x_CarbonGramsCO2e": carbon_g,
    }


def focus_event(e: Mapping[str, Any]) -> dict[str, Any]:
    """One FOCUS row for one event; its charge period runs from its arrival to its last byte."""
    start = datetime.fromtimestamp(math.floor(e["ts"]), UTC)
    end = datetime.fromtimestamp(max(math.floor(e["ts"]) + 1, math.ceil(e["ts"] + e["latency_ms"] / 1000)), UTC)
    billed = bool(e["billed"])
    what = f"{e['input_tokens']} input + {e['output_tokens']} output tokens of {e['model']} on {e['backend']}"
    return {
        **_focus_common(e["tenant"], e["backend"], e["backend_class"], e["zone"], e["model"], (start, end)),
        **_figures(
            e["cost_usd"] if billed else 0.0, e["input_tokens"], e["output_tokens"], e["energy_wh"], e["carbon_g"]
        ),
        "ChargeDescription": what if billed else f"{what} ({e['kind']} attempt, not billed)",
        "SubAccountId": e["key_id"],
        "SubAccountName": e["key_id"],
        "x_EnergyProvenance": e["energy_source"],
        "x_RequestId": e["request_id"],
        "x_EventKind": e["kind"],
    }


def focus_rollup(r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A day's rollup as FOCUS rows: the billed usage, and the unbilled consumption if any."""
    day = date.fromisoformat(str(r["day"]))
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    common = {
        **_focus_common(
            r["tenant"], r["backend"], r["backend_class"], r["zone"], r["model"], (start, start + timedelta(days=1))
        ),
        "SubAccountId": None,
        "SubAccountName": None,
        "x_EnergyProvenance": r["energy_source"],
        "x_RequestId": None,
    }
    rows = []
    if r["requests"] or not r["unbilled_events"]:
        rows.append(
            {
                **common,
                **_figures(r["cost_usd"], r["input_tokens"], r["output_tokens"], r["energy_wh"], r["carbon_g"]),
                "ChargeDescription": f"{r['requests']} requests to {r['model']} on {r['backend']}",
                "x_EventKind": "request",
            }
        )
    if r["unbilled_events"]:
        rows.append(
            {
                **common,
                **_figures(
                    0.0,
                    r["unbilled_input_tokens"],
                    r["unbilled_output_tokens"],
                    r["unbilled_energy_wh"],
                    r["unbilled_carbon_g"],
                ),
                "ChargeDescription": f"{r['unbilled_events']} retried or hedged attempts to {r['model']} "
                f"on {r['backend']}, not billed",
                "x_EventKind": "unbilled",
            }
        )
    return rows
