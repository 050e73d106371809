"""The types policies work on: a policy's spec, a candidate backend with its stats, a scored pick."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from providers.base import BackendClass, BackendInfo


class Weights(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency: float = Field(default=1.0, ge=0)
    price: float = Field(default=1.0, ge=0)
    energy: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.latency + self.price + self.energy <= 0:
            raise ValueError("policy weights must not all be zero")
        return self


class PolicySpec(BaseModel):
    """A tenant's routing policy: hard constraints first, then weights over the scorers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Weights = Weights()
    classes: frozenset[BackendClass] | None = None  # None = every class the tenant may use
    zones: frozenset[str] | None = None  # None = any zone


@dataclass(frozen=True, slots=True)
class Stats:
    """Live measurements of one backend; None where nothing has been measured yet."""

    ttft_s: float | None = None
    tokens_per_s: float | None = None
    error_rate: float = 0.0
    inflight: int = 0
    ejected: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    info: BackendInfo
    stats: Stats = Stats()
    price_input: float | None = None  # USD per 1M tokens of this model on this backend
    price_output: float | None = None

    @property
    def measured(self) -> bool:
        return self.stats.ttft_s is not None


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What the scorers need to know of the request: its token estimate."""

    input_tokens: int
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class Scored:
    candidate: Candidate
    score: float
    parts: dict[str, float] = field(default_factory=dict)
