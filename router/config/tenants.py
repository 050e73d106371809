"""A tenant's config: its routing policy, rate limits, budgets and fallback models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from policies.base import PolicySpec
from policies.presets import PRESETS
from router.config.base import NAME_PATTERN, Strict


class RateLimits(Strict):
    """Per minute and in flight, for a tenant or one of its keys; None = no limit. Integers only."""

    requests_per_minute: int | None = Field(default=None, gt=0, strict=True)
    tokens_per_minute: int | None = Field(default=None, gt=0, strict=True)
    concurrent_streams: int | None = Field(default=None, gt=0, strict=True)


class Budget(Strict):
    """A cap on a tenant's spend over a UTC period: ``soft`` warns, ``hard`` refuses.
    Units: usd in USD, kwh in kWh, kg_co2e in kg of CO2e."""

    metric: Literal["usd", "kwh", "kg_co2e"]
    period: Literal["daily", "monthly", "total"]
    hard: float | None = Field(default=None, ge=0, strict=True, allow_inf_nan=False)
    soft: float | None = Field(default=None, ge=0, strict=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _limits(self) -> Budget:
        if self.hard is None and self.soft is None:
            raise ValueError("a budget needs a hard or a soft limit (or both)")
        if self.hard is not None and self.soft is not None and self.soft > self.hard:
            raise ValueError(f"soft limit {self.soft} is above the hard limit {self.hard}")
        return self


class TenantConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    policy: str | PolicySpec = "balanced"
    allow_volunteer: bool = False
    limits: RateLimits = RateLimits()
    budgets: list[Budget] = []
    fallback_models: dict[str, list[str]] = {}  # model -> models tried in order when it has no backend

    @field_validator("policy")
    @classmethod
    def _known_preset(cls, v: str | PolicySpec) -> str | PolicySpec:
        if isinstance(v, str) and v not in PRESETS:
            raise ValueError(f"unknown policy preset {v!r}; presets are {', '.join(sorted(PRESETS))}")
        return v

    @field_validator("budgets")
    @classmethod
    def _no_overlap(cls, v: list[Budget]) -> list[Budget]:
        seen = [(b.metric, b.period) for b in v]
        for metric, period in sorted({p for p in seen if seen.count(p) > 1}):
            raise ValueError(f"overlapping budgets: two {metric} budgets over the same {period!r} period")
        return v

    def policy_spec(self) -> PolicySpec:
        spec = PRESETS[self.policy] if isinstance(self.policy, str) else self.policy
        if not self.fallback_models:
            return spec
        fallbacks = {**spec.fallback_models, **{m: tuple(f) for m, f in self.fallback_models.items()}}
        return spec.model_copy(update={"fallback_models": fallbacks})
