"""Energy and carbon per request, each estimate with its provenance.

Joules per token, in order of preference:

1. ``measured``: power the backend reports (``x-power-watts``) over the throughput we measure
   there, shared among the requests in flight (J/token = W / (tokens/s x concurrency)), as an EWMA;
2. ``declared``: ``energy.joules_per_token`` in the config (applies to every token);
3. ``derived`` from a declared ``hardware`` profile and the measured throughput, the same way;
4. ``derived`` with EcoLogits (https://ecologits.ai) for commercial datacenter models it knows:
   its regression of GPU and server energy on the model's active parameters, with the provider's
   datacenter PUE, per generated token.

Carbon is energy times the grid intensity of the backend's zone, from EcoLogits' electricity
mixes (215 zones, ISO 3166-1 alpha-3; alpha-2 codes are mapped), overridable from a file or per
backend. Everything here is read once at start; only the measured EWMA changes while serving.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from policies.base import NO_ENERGY, EnergyEstimate, Profile, Stats
from router.carbon import ecologits_file

log = logging.getLogger("fedrouter")

POWER_HEADER = "x-power-watts"
_ALPHA = 0.3  # EWMA weight of the newest power sample, as for the other backend stats
_ECOLOGITS_TOKENS = 1000  # tokens per sample request: per-token energy is linear beyond the first


class EcologitsEnergy:
    """Energy per generated token of the commercial models EcoLogits describes, computed once
    per model with its ``llm_impacts`` (model size, token count, provider PUE)."""

    def __init__(self) -> None:
        self._providers: dict[str, str] | None = None
        self._cache: dict[str, float | None] = {}

    def _index(self) -> dict[str, str]:
        raw = orjson.loads(ecologits_file("models.json").read_bytes())
        index = {m["name"]: m["provider"] for m in raw["models"]}
        index.update({a["name"]: a["provider"] for a in raw.get("aliases") or []})
        return index

    def joules_per_output_token(self, model: str) -> float | None:
        if model in self._cache:
            return self._cache[model]
        if self._providers is None:
            self._providers = self._index()
        name = model if model in self._providers else model.split("/", 1)[-1]
        provider = self._providers.get(name)
        value = None if provider is None else _ecologits_joules(provider, name)
        self._cache[model] = value
        return value


def _ecologits_joules(provider: str, name: str) -> float | None:
    from ecologits.tracers.utils import llm_impacts  # imported only when a model needs it

    impacts = llm_impacts(provider, name, _ECOLOGITS_TOKENS, math.inf)
    if impacts.energy is None:
        return None
    value = impacts.energy.value  # kWh, a range where the model's size is only bracketed
    kwh = float(value) if isinstance(value, int | float) else (value.min + value.max) / 2
    return kwh * 3.6e6 / _ECOLOGITS_TOKENS


def static_estimate(
    backend_class: str, declared_jpt: float | None, upstream_model: str, has_hardware: bool, ecologits: EcologitsEnergy
) -> EnergyEstimate:
    """The estimate a backend starts with, before any measurement."""
    if declared_jpt is not None:
        return EnergyEstimate(declared_jpt, declared_jpt, "declared")
    if backend_class == "datacenter" and not has_hardware:
        jpt = ecologits.joules_per_output_token(upstream_model)
        if jpt is not None:
            return EnergyEstimate(0.0, jpt, "derived")
    return NO_ENERGY


def power_watts(headers: Mapping[str, str]) -> float | None:
    """The power a backend reports on its response, if it is a sane number of watts."""
    raw = headers.get(POWER_HEADER)
    if raw is None:
        return None
    try:
        watts = float(raw)
    except ValueError:
        return None
    return watts if math.isfinite(watts) and 0 < watts < 1e7 else None


@dataclass(slots=True)
class _Measured:
    joules_per_token: float


class EnergyBook:
    """Measured joules per generated token by backend (EWMA), and the estimate for a request."""

    def __init__(self) -> None:
        self._measured: dict[str, _Measured] = {}

    def observe(self, backend: str, watts: float, tokens_per_s: float | None, concurrency: int) -> None:
        """One power reading, taken while ``concurrency`` of our requests were in flight there."""
        if not tokens_per_s or tokens_per_s <= 0:
            return  # without a throughput the reading cannot be spread over tokens
        sample = watts / (tokens_per_s * max(1, concurrency))
        entry = self._measured.get(backend)
        if entry is None:
            self._measured[backend] = _Measured(sample)
        else:
            entry.joules_per_token += _ALPHA * (sample - entry.joules_per_token)

    def measured(self, backend: str) -> float | None:
        entry = self._measured.get(backend)
        return None if entry is None else entry.joules_per_token

    def estimate(self, profile: Profile, stats: Stats) -> EnergyEstimate:
        entry = self._measured.get(profile.info.name)
        if entry is not None:
            return EnergyEstimate(0.0, entry.joules_per_token, "measured")
        if profile.hardware_watts is not None and profile.energy.source != "declared" and stats.tokens_per_s:
            share = stats.tokens_per_s * (stats.inflight + 1)  # this request joins those in flight
            return EnergyEstimate(0.0, profile.hardware_watts / share, "derived")
        return profile.energy
