"""The federation config file: its typed, strictly validated form and its loader.

The config is validated once, here, at the edge; past this module the gateway only sees these
typed objects. Unknown keys are errors (``extra="forbid"``) and every message names the key and
where it stands, so a typo never silently becomes a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.base import Capability, PolicySpec
from policies.presets import PRESETS
from providers import base as provider_base
from providers.base import BackendClass
from router.carbon import CarbonTable, UnknownZone

_UNION_TAGS = ("str", "PolicySpec")
_SECRET_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class ConfigError(ValueError):
    """The config is invalid; the message is one line per problem, each naming where it stands."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Price(_Strict):
    """USD per one million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class Energy(_Strict):
    joules_per_token: float = Field(gt=0)


class Hardware(_Strict):
    """The accelerators behind a backend; with measured throughput they give joules per token."""

    gpu: str
    count: int = Field(default=1, ge=1)
    watts: float = Field(gt=0)  # board power of one accelerator


_TIMEOUTS, _LIMITS = provider_base.DEFAULT_TIMEOUTS, provider_base.DEFAULT_LIMITS  # their one home


class Timeouts(_Strict):
    connect: float = Field(default=_TIMEOUTS.connect, gt=0)
    first_token: float = Field(default=_TIMEOUTS.first_token, gt=0)
    idle: float = Field(default=_TIMEOUTS.idle, gt=0)
    total: float = Field(default=_TIMEOUTS.total, gt=0)

    def value(self) -> provider_base.Timeouts:  # the plain value every provider takes
        return provider_base.Timeouts(self.connect, self.first_token, self.idle, self.total)


class _BackendBase(_Strict):
    name: str = Field(pattern=_NAME)
    backend_class: BackendClass = Field(alias="class")
    models: list[str] | dict[str, str]
    base_url: str | None = None
    api_key: str | None = None
    zone: str | None = None
    price: Price | None = None
    energy: Energy | None = None
    hardware: Hardware | None = None
    carbon_intensity: float | None = Field(default=None, ge=0)  # gCO2e/kWh; overrides the zone's grid
    trust: float | None = Field(default=None, ge=0, le=1)  # default by class
    context_length: int | None = Field(default=None, gt=0)  # prompt + output tokens it accepts
    capabilities: list[Capability] | None = None  # None = not declared, never filtered on
    max_concurrency: int | None = Field(default=None, gt=0)
    timeouts: Timeouts = Timeouts()

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, v: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        if not v:
            raise ValueError("a backend must serve at least one model")
        return v

    @field_validator("api_key")
    @classmethod
    def _secret_by_reference(cls, v: str | None) -> str | None:
        if v is not None and not _SECRET_REF.match(v):
            raise ValueError("secrets are given by reference only, as env:VARIABLE_NAME")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("base_url must be an http:// or https:// URL")
        return v.rstrip("/") if v else v

    def limits(self) -> provider_base.Limits:
        """What its answers may make the gateway hold; the defaults where the type sets none."""
        return _LIMITS

    def model_map(self) -> dict[str, str]:
        """Public model name -> the name the backend knows it by."""
        if isinstance(self.models, dict):
            return dict(self.models)
        return {m: m for m in self.models}

    def resolved_api_key(self) -> str | None:
        if self.api_key is None:
            return None
        match = _SECRET_REF.match(self.api_key)
        assert match  # checked by the validator
        return os.environ.get(match.group(1))


class OpenAIBackendConfig(_BackendBase):
    """Any OpenAI-compatible server (vLLM, llama.cpp, TGI, Ollama, OpenAI, Groq ...)."""

    type: Literal["openai"]
    #: Ask the upstream for a usage chunk on every stream, so that billing never relies on counting.
    stream_usage: bool = True
    # What an answer may make the gateway's own client hold (see providers.base.Limits).
    max_response_bytes: int = Field(default=_LIMITS.max_response_bytes, ge=1024)
    max_event_bytes: int = Field(default=_LIMITS.max_event_bytes, ge=1024)
    max_connections: int = Field(default=_LIMITS.max_connections, gt=0)

    def limits(self) -> provider_base.Limits:
        return provider_base.Limits(self.max_response_bytes, self.max_event_bytes, self.max_connections)

    @model_validator(mode="after")
    def _needs_url(self) -> OpenAIBackendConfig:
        if not self.base_url:
            raise ValueError("an openai backend needs base_url")
        return self


class LiteLLMBackendConfig(_BackendBase):
    """A provider litellm speaks (Anthropic, Gemini, Bedrock, Cohere ...); models map to litellm names."""

    type: Literal["litellm"]


BackendConfig = Annotated[OpenAIBackendConfig | LiteLLMBackendConfig, Field(discriminator="type")]


class RateLimits(_Strict):
    """Per minute and in flight, for a tenant or one of its keys; None = no limit. Integers only."""

    requests_per_minute: int | None = Field(default=None, gt=0, strict=True)
    tokens_per_minute: int | None = Field(default=None, gt=0, strict=True)
    concurrent_streams: int | None = Field(default=None, gt=0, strict=True)


class Budget(_Strict):
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


class TenantConfig(_Strict):
    name: str = Field(pattern=_NAME)
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


class RetryBudget(_Strict):
    """Retries (any attempt after a request's first) allowed over a sliding window, across all
    replicas: ``ratio`` x requests + ``min_per_s`` x ``window_s``. Under a full outage upstream
    attempts stay near the request rate instead of multiplying it."""

    ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_s: float = Field(default=1.0, ge=0)
    window_s: float = Field(default=10.0, ge=1, le=300)


class HedgingConfig(_Strict):
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


class RoutingConfig(_Strict):
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


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: Inference requests in flight (streams until they end) above which new ones get 503 at once.
    max_concurrency: int | None = Field(default=None, gt=0)


class CarbonConfig(_Strict):
    intensity_file: str | None = None  # YAML/JSON {zone: gCO2e per kWh}, over EcoLogits' grid mixes


class FederationConfig(_Strict):
    backends: list[BackendConfig]
    tenants: list[TenantConfig] = []
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()
    carbon: CarbonConfig = CarbonConfig()
    fallback_models: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _unique_names(self) -> FederationConfig:
        if not self.backends:
            raise ValueError("backends: at least one backend is needed")
        for kind, names in (("backend", [b.name for b in self.backends]), ("tenant", [t.name for t in self.tenants])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(dupes)}")
        for b in self.backends:
            if b.api_key and b.resolved_api_key() is None:
                raise ValueError(f"backends[{b.name}].api_key: environment variable {b.api_key[4:]} is not set")
        _check_zones(self)
        _check_fallbacks(self)
        if unknown := set(self.routing.hedging.tenants or ()) - {t.name for t in self.tenants}:
            raise ValueError(f"routing.hedging.tenants: unknown tenant(s) {', '.join(sorted(unknown))}")
        return self

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)


def _check_zones(config: FederationConfig) -> None:
    """Every zone must have a grid intensity, unless the backend declares its own."""
    table = CarbonTable(config.carbon.intensity_file)
    zones = {b.zone for b in config.backends if b.zone is not None}
    for b in config.backends:
        if b.zone is not None and b.carbon_intensity is None:
            try:
                table.intensity(b.zone)
            except UnknownZone as exc:
                raise ValueError(f"backends[{b.name}].zone: {exc}") from None
    for t in config.tenants:
        spec = t.policy_spec()
        for zone in sorted(spec.zones or ()):
            if zone not in zones and table.canonical(zone) is None:
                raise ValueError(f"tenants[{t.name}].policy.zones: unknown zone {zone!r}")


def _check_fallbacks(config: FederationConfig) -> None:
    """Fallback models must exist, and following them must never come back to where it started."""
    known = {m for b in config.backends for m in b.model_map()}
    graphs: list[tuple[str, Mapping[str, Sequence[str]]]] = [("fallback_models", config.fallback_models)]
    graphs += [
        (f"tenants[{t.name}].fallback_models", {**config.fallback_models, **spec.fallback_models})
        for t in config.tenants
        if (spec := t.policy_spec()).fallback_models
    ]
    for where, graph in graphs:
        for model, fallbacks in graph.items():
            for m in (model, *fallbacks):
                if m not in known:
                    raise ValueError(f"{where}[{model}]: unknown model {m!r}")
        for model in graph:
            cycle = _cycle(graph, [model])
            if cycle:
                raise ValueError(f"{where}: fallback cycle {' -> '.join(cycle)}")


def _cycle(graph: Mapping[str, Sequence[str]], path: list[str]) -> list[str] | None:
    for nxt in graph.get(path[-1], ()):
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        found = _cycle(graph, [*path, nxt])
        if found:
            return found
    return None


def parse_config(raw: Any, source: str = "config") -> FederationConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'backends' key")
    try:
        return FederationConfig.model_validate(raw)
    except ValidationError as exc:
        errors = [err for err in exc.errors() if "str" not in err["loc"]] or exc.errors()
        raise ConfigError("\n".join(_describe(err, raw, source) for err in errors)) from None


def load_config(path: str | Path) -> FederationConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_config(raw, str(path))


def _describe(err: Any, raw: dict[str, Any], source: str) -> str:
    if err["type"] == "extra_forbidden":
        parent = _where(err["loc"][:-1], raw)
        return f"{source}: {parent + ': ' if parent else ''}unknown key {err['loc'][-1]!r}"
    where = _where(err["loc"], raw)
    if err["type"] == "missing":
        return f"{source}: {where}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: {where}: {msg}" if where else f"{source}: {msg}"


def _where(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """Render a pydantic location, naming list items by their ``name`` where they have one."""
    parts: list[str] = []
    node: Any = raw
    for i, key in enumerate(loc):
        if isinstance(key, int):
            item = node[key] if isinstance(node, list) and key < len(node) else None
            label = item.get("name") if isinstance(item, dict) else None
            parts[-1] += f"[{label or key}]"
            node = item
            continue
        # The discriminator tag pydantic inserts after a list index is not a key of the file.
        if i > 0 and isinstance(loc[i - 1], int) and key in ("openai", "litellm") and key not in (node or {}):
            continue
        # So is the branch of a union (a policy is a preset name or a PolicySpec).
        if key in _UNION_TAGS and not (isinstance(node, dict) and key in node):
            continue
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)
