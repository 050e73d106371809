"""From tokens to a usage record: cost at the backend's price, energy at its joules per token."""

from __future__ import annotations

import time
from dataclasses import dataclass

from policies.base import Scored
from router.ledger.base import Outcome, UsageRecord
from router.metrics import Metrics

_J_PER_WH = 3600.0


@dataclass(slots=True)
class RequestContext:
    """One client request as it travels through the gateway."""

    request_id: str
    tenant: str
    model: str
    endpoint: str
    stream: bool
    received_ts: float  # wall clock, for the ledger
    started: float  # perf_counter, for latency


def build_record(ctx: RequestContext, scored: Scored, input_tokens: int, output_tokens: int,
                 outcome: Outcome, tokens_source: str, attempts: int, ttft_s: float | None) -> UsageRecord:
    cand = scored.candidate
    cost = (input_tokens * (cand.price_input or 0.0) + output_tokens * (cand.price_output or 0.0)) / 1e6
    energy = (input_tokens + output_tokens) * (cand.info.joules_per_token or 0.0) / _J_PER_WH
    return UsageRecord(
        request_id=ctx.request_id,
        ts=ctx.received_ts,
        tenant=ctx.tenant,
        backend=cand.info.name,
        backend_class=cand.info.backend_class,
        zone=cand.info.zone,
        model=ctx.model,
        endpoint=ctx.endpoint,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        energy_wh=energy,
        latency_ms=(time.perf_counter() - ctx.started) * 1000.0,
        ttft_ms=None if ttft_s is None else ttft_s * 1000.0,
        outcome=outcome,
        tokens_source="upstream" if tokens_source == "upstream" else "counted",
        attempts=attempts,
        stream=ctx.stream,
    )


def observe(metrics: Metrics, rec: UsageRecord) -> None:
    metrics.requests.labels(rec.endpoint, rec.model, rec.backend, rec.outcome).inc()
    metrics.duration.labels(rec.endpoint, rec.backend).observe(rec.latency_ms / 1000.0)
    if rec.ttft_ms is not None and rec.stream:
        metrics.ttft.labels(rec.backend).observe(rec.ttft_ms / 1000.0)
    metrics.tokens.labels(rec.backend, "input").inc(rec.input_tokens)
    metrics.tokens.labels(rec.backend, "output").inc(rec.output_tokens)
    metrics.cost.labels(rec.tenant, rec.backend).inc(rec.cost_usd)
    metrics.energy.labels(rec.backend, rec.backend_class).inc(rec.energy_wh)
