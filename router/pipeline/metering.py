"""From tokens to a usage record: cost at the backend's price, energy at its joules per token."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from policies.base import Scored
from providers.base import Endpoint
from router.ledger.base import Kind, Outcome, UsageRecord
from router.metrics import Metrics
from router.pipeline.planner import Plan

_J_PER_WH = 3600.0


@dataclass(slots=True)
class RequestContext:
    """One client request as it travels through the gateway."""

    request_id: str
    tenant: str
    model: str
    endpoint: Endpoint
    stream: bool
    received_ts: float  # wall clock, for the ledger
    started: float  # perf_counter, for latency
    key_id: str | None = None
    plan: Plan | None = None  # why the request went where it did, for its ledger records
    _decision: str | None = field(default=None, repr=False)

    @property
    def decision(self) -> str | None:
        """``decision_json`` of the plan, made when the first record is built: after the upstream
        call has gone out rather than before it, where a streamed answer's first byte waits."""
        if self._decision is None and self.plan is not None:
            self._decision = decision_json(self.plan)
        return self._decision


def decision_json(plan: Plan) -> str:
    """Why the request went where it did: candidates in order with their scores, and the
    backends filtered out with the reason; kept on every ledger event of the request."""
    return orjson.dumps(
        {  # about 2 µs for four candidates: cheap enough for every request
            "candidates": [{"backend": s.candidate.info.name, "score": s.score, "parts": s.parts} for s in plan.order],
            "rejected": plan.rejected,
        }
    ).decode()


# Past any model's context window: a count above it is a backend's error, not a bill.
_MAX_TOKENS = 10_000_000


def reported(usage: object) -> tuple[int | None, int | None]:
    """A backend's own prompt and completion token counts, each None unless believable: a
    non-negative integer (not a bool) within any context window. What is None is counted."""
    if not isinstance(usage, dict):
        return None, None
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def billed_tokens(usage: object, count_in: Callable[[], int], count_out: Callable[[], int]) -> tuple[int, int, str]:
    """Tokens in and out, and their source: the backend's believable counts (``reported``), what
    is missing counted at the gateway; "upstream" only if the backend gave both."""
    tokens_in, tokens_out = reported(usage)
    source = "upstream" if tokens_in is not None and tokens_out is not None else "counted"
    if tokens_in is None:
        tokens_in = count_in()
    if tokens_out is None:
        tokens_out = count_out()
    return tokens_in, tokens_out, source


def _count(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= _MAX_TOKENS else None


def build_record(
    ctx: RequestContext,
    scored: Scored,
    input_tokens: int,
    output_tokens: int,
    outcome: Outcome,
    tokens_source: str,
    attempts: int,
    ttft_s: float | None,
    *,
    attempt: int | None = None,
    kind: Kind = "request",
    billed: bool = True,
) -> UsageRecord:
    """The event of one attempt. The billed one (``kind="request"``) is the attempt that answered
    the client, by default the last of ``attempts``; a failed retried or losing hedged attempt
    that consumed tokens is recorded with ``kind="retry"``/``"hedge"`` and ``billed=False``."""
    cand = scored.candidate
    cost = (input_tokens * (cand.price_input or 0.0) + output_tokens * (cand.price_output or 0.0)) / 1e6
    # The estimate chosen at planning (measured, declared or derived), with its provenance.
    joules = cand.energy.joules(input_tokens, output_tokens)
    energy = (joules or 0.0) / _J_PER_WH
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
        attempt=attempts if attempt is None else attempt,
        kind=kind,
        billed=billed,
        key_id=ctx.key_id,
        energy_source="none" if joules is None else cand.energy.source,
        carbon_g=energy / 1000.0 * (cand.profile.carbon_intensity or 0.0),
        decision=ctx.decision,
    )


def observe(metrics: Metrics, rec: UsageRecord) -> None:
    metrics.observe_usage(rec)
