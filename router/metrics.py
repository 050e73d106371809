"""Prometheus metrics, on a registry of the app's own so that many apps can live in one process."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.ledger.base import UsageRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fedrouter_requests",
            "Requests answered, by route, model, backend and outcome.",
            ["route", "model", "backend", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "fedrouter_request_duration_seconds",
            "Time from request to last byte.",
            ["route", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "fedrouter_ttft_seconds",
            "Time to first token of streamed responses.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "fedrouter_tokens", "Tokens, by backend and direction (input/output).", ["backend", "direction"], registry=r
        )
        self.cost = Counter("fedrouter_cost_usd", "Cost billed, USD.", ["tenant", "backend"], registry=r)
        self.energy = Counter("fedrouter_energy_wh", "Energy attributed, Wh.", ["backend", "backend_class"], registry=r)
        self.attempts = Counter(
            "fedrouter_upstream_attempts", "Upstream attempts, by result.", ["backend", "result"], registry=r
        )
        self.backend_up = Gauge(
            "fedrouter_backend_up", "1 if the backend is not ejected.", ["backend", "backend_class"], registry=r
        )
        self.inflight = Gauge("fedrouter_inflight_requests", "Requests in flight per backend.", ["backend"], registry=r)
        self.ledger_pending = Gauge(
            "fedrouter_ledger_pending_records", "Usage records queued but not yet committed.", registry=r
        )
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self._attempt_children: dict[tuple[str, str], Any] = {}

    def attempt(self, backend: str, outcome: str) -> None:
        """Count one upstream attempt (its labelled child cached, as in ``observe_usage``)."""
        child = self._attempt_children.get((backend, outcome))
        if child is None:
            if len(self._attempt_children) > 10_000:
                self._attempt_children.clear()
            child = self._attempt_children[backend, outcome] = self.attempts.labels(backend, outcome)
        child.inc()

    def refused(self, endpoint: str, outcome: str) -> None:
        """Count a request answered without reaching any backend (a bad request or key, a limit,
        no backend left): backend and model "", so that client input never makes a label."""
        self.requests.labels(endpoint, "", "", outcome).inc()

    def observe_usage(self, rec: UsageRecord) -> None:
        """Count one finished request. The labelled children are cached per label set, since
        looking them up costs more than the counting itself."""
        key = (rec.endpoint, rec.model, rec.backend, rec.outcome, rec.tenant, rec.backend_class)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:
                self._children.clear()
            children = self._children[key] = (
                self.requests.labels(rec.endpoint, rec.model, rec.backend, rec.outcome),
                self.duration.labels(rec.endpoint, rec.backend),
                self.ttft.labels(rec.backend),
                self.tokens.labels(rec.backend, "input"),
                self.tokens.labels(rec.backend, "output"),
                self.cost.labels(rec.tenant, rec.backend),
                self.energy.labels(rec.backend, rec.backend_class),
            )
        requests, duration, ttft, tokens_in, tokens_out, cost, energy = children
        requests.inc()
        duration.observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None and rec.stream:
            ttft.observe(rec.ttft_ms / 1000.0)
        tokens_in.inc(rec.input_tokens)
        tokens_out.inc(rec.output_tokens)
        if rec.billed:
            cost.inc(rec.cost_usd)
        energy.inc(rec.energy_wh)
