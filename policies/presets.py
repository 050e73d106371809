"""The policy presets a tenant can name instead of writing weights."""

from __future__ import annotations

from policies.base import PolicySpec, Weights

PRESETS: dict[str, PolicySpec] = {
    "balanced": PolicySpec(weights=Weights(latency=1.0, price=1.0, energy=1.0)),
    "fastest": PolicySpec(weights=Weights(latency=1.0, price=0.05, energy=0.05)),
    "cheapest": PolicySpec(weights=Weights(latency=0.05, price=1.0, energy=0.05)),
    "greenest": PolicySpec(weights=Weights(latency=0.05, price=0.05, energy=1.0)),
    "sovereign-only": PolicySpec(classes=frozenset({"sovereign"})),
}
