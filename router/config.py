"""The federation config file: its typed, strictly validated form and its loader.

The config is validated once, here, at the edge; past this module the gateway only sees these
typed objects. Unknown keys are errors (``extra="forbid"``) and every message names the key and
where it stands, so a typo never silently becomes a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.base import PolicySpec
from policies.presets import PRESETS
from providers.base import BackendClass

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


class Timeouts(_Strict):
    connect: float = Field(default=5.0, gt=0)
    first_token: float = Field(default=60.0, gt=0)
    idle: float = Field(default=60.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class _BackendBase(_Strict):
    name: str = Field(pattern=_NAME)
    backend_class: BackendClass = Field(alias="class")
    models: list[str] | dict[str, str]
    base_url: str | None = None
    api_key: str | None = None
    zone: str | None = None
    price: Price | None = None
    energy: Energy | None = None
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

    @model_validator(mode="after")
    def _needs_url(self) -> OpenAIBackendConfig:
        if not self.base_url:
            raise ValueError("an openai backend needs base_url")
        return self


class LiteLLMBackendConfig(_BackendBase):
    """A provider litellm speaks (Anthropic, Gemini, Bedrock, Cohere ...); models map to litellm names."""

    type: Literal["litellm"]


BackendConfig = Annotated[OpenAIBackendConfig | LiteLLMBackendConfig, Field(discriminator="type")]


class TenantConfig(_Strict):
    name: str = Field(pattern=_NAME)
    policy: str | PolicySpec = "balanced"
    allow_volunteer: bool = False

    @field_validator("policy")
    @classmethod
    def _known_preset(cls, v: str | PolicySpec) -> str | PolicySpec:
        if isinstance(v, str) and v not in PRESETS:
            raise ValueError(f"unknown policy preset {v!r}; presets are {', '.join(sorted(PRESETS))}")
        return v

    def policy_spec(self) -> PolicySpec:
        return PRESETS[self.policy] if isinstance(self.policy, str) else self.policy


class RoutingConfig(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=10)
    retries_per_backend: int = Field(default=1, ge=0, le=5)
    backoff_initial: float = Field(default=0.05, ge=0)
    backoff_max: float = Field(default=1.0, ge=0)
    eject_after_failures: int = Field(default=3, ge=1)
    eject_seconds: float = Field(default=15.0, gt=0)
    exploration: float = Field(default=0.05, ge=0, le=0.5)


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)


class FederationConfig(_Strict):
    backends: list[BackendConfig]
    tenants: list[TenantConfig] = []
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()

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
        return self

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)


def parse_config(raw: Any, source: str = "config") -> FederationConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'backends' key")
    try:
        return FederationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(err, raw, source) for err in exc.errors())) from None


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
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)
