"""A backend's config: where it is, what it serves, at what price and energy, and its time and size limits."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from policies.base import Capability
from providers import base as provider_base
from providers.base import BackendClass
from router.config.base import NAME_PATTERN, SECRET_REF, Strict


class Price(Strict):
    """USD per one million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class Energy(Strict):
    joules_per_token: float = Field(gt=0)


class Hardware(Strict):
    """The accelerators behind a backend; with measured throughput they give joules per token."""

    gpu: str
    count: int = Field(default=1, ge=1)
    watts: float = Field(gt=0)  # board power of one accelerator


_TIMEOUTS, _LIMITS = provider_base.DEFAULT_TIMEOUTS, provider_base.DEFAULT_LIMITS  # their one home


class Timeouts(Strict):
    connect: float = Field(default=_TIMEOUTS.connect, gt=0)
    first_token: float = Field(default=_TIMEOUTS.first_token, gt=0)
    idle: float = Field(default=_TIMEOUTS.idle, gt=0)
    total: float = Field(default=_TIMEOUTS.total, gt=0)

    def value(self) -> provider_base.Timeouts:  # the plain value every provider takes
        return provider_base.Timeouts(self.connect, self.first_token, self.idle, self.total)


class _BackendBase(Strict):
    name: str = Field(pattern=NAME_PATTERN)
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
        if v is not None and not SECRET_REF.match(v):
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
        match = SECRET_REF.match(self.api_key)
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
