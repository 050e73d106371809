"""Gateway-wide settings: routing (attempts, backoff, ejection, hedging), client limits, carbon data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, model_validator

from router.config.base import Strict


class RetryBudget(Strict):
    """Retries (any attempt after a request's first) allowed over a sliding window, across all
    replicas: ``ratio`` x requests + ``min_per_s`` x ``window_s``. Under a full outage upstream
    attempts stay near the request rate instead of multiplying it."""

    ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_s: float = Field(default=1.0, ge=0)
    window_s: float = Field(default=10.0, ge=1, le=300)


class HedgingConfig(Strict):
    """A second backend asked when the first has not answered by ``delay`` (its measured p95 time
    to first token, or seconds); the first answer wins and the other is cancelled."""

    enabled: bool = False
    max_share: float = Field(default=0.05, ge=0, le=0.5)  # hedges per request, over the budget window
    delay: Literal["p95_ttft"] | Annotated[float, Field(gt=0)] = "p95_ttft"
    tenants: list[str] | None = None  # None: every tenant; else only these (latency-sensitive ones)


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    """When a backend is ejected for a model: the ``routing.eject_*`` fields, read as one value.
    It has no defaults of its own: they are RoutingConfig's, so they are written once."""

    after_failures: int  # failures in a row ...
    base_s: float  # ... eject for this long x the ejections in a row
    error_rate: float  # ... or this failure rate over the window
    min_requests: int  # attempts in the window before the rate counts
    max_share: float  # of a model's backends out at once; at least one may go

    @classmethod
    def of(cls, r: RoutingConfig) -> EjectionPolicy:
        return cls(
            r.eject_after_failures, r.eject_seconds, r.eject_error_rate, r.eject_min_requests, r.max_ejected_share
        )


class RoutingConfig(Strict):
    max_attempts: int = Field(default=3, ge=1, le=10)
    retries_per_backend: int = Field(default=1, ge=0, le=5)
    backoff_initial: float = Field(default=0.05, ge=0)
    backoff_max: float = Field(default=1.0, ge=0)
    eject_after_failures: int = Field(default=3, ge=1)
    eject_seconds: float = Field(default=15.0, gt=0)
    eject_error_rate: float = Field(default=0.5, gt=0, le=1)  # ... or this failure rate over the window
    eject_min_requests: int = Field(default=20, ge=1)  # attempts in the window before the rate counts
    max_ejected_share: float = Field(default=0.5, gt=0, le=1)  # of a model's backends; at least one may go
    exploration: float = Field(default=0.05, ge=0, le=0.5)
    deadline_s: float = Field(default=120.0, gt=0)  # for a whole answer, or a stream's first event
    retry_budget: RetryBudget = RetryBudget()
    hedging: HedgingConfig = HedgingConfig()
    #: K: a model served by more backends is not scored whole on each request, only the first K
    #: admissible ones of a ranking rebuilt every second or so (see policies.selection).
    consider: int = Field(default=16, ge=1, le=4096)

    @model_validator(mode="after")
    def _consider_covers_attempts(self) -> RoutingConfig:
        if self.consider < self.max_attempts:
            raise ValueError(
                f"consider ({self.consider}) must be at least max_attempts "
                f"({self.max_attempts}): fewer backends considered would cut fallback short"
            )
        return self


class LimitsConfig(Strict):
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: Inference requests in flight (streams until they end) above which new ones get 503 at once.
    max_concurrency: int | None = Field(default=None, gt=0)
    #: Open client connections above which a new one gets 503 and is closed; the server also keeps
    #: it under half the process's open-file limit, so that backends, ledger and state keep fds.
    max_connections: int = Field(default=4096, gt=0)
    #: Seconds a client may take to send a request's line and headers, and then its body.
    head_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    #: Seconds a stream may wait for a client that reads nothing before it is ended and freed.
    write_stall_s: float = Field(default=30.0, gt=0)


class CarbonConfig(Strict):
    intensity_file: str | None = None  # YAML/JSON {zone: gCO2e per kWh}, over EcoLogits' grid mixes
