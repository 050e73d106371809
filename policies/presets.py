"""The policy presets a tenant can name instead of writing weights."""

from __future__ import annotations

from policies.base import BALANCED, PolicySpec, Weights

PRESETS: dict[str, PolicySpec] = {
    "balanced": PolicySpec(weights=BALANCED),
    # Load counts a little: a busy backend answers later than its history says.
    "fastest": PolicySpec(weights=Weights(latency=1.0, load=0.1)),
    "cheapest": PolicySpec(weights=Weights(price=1.0, latency=0.05)),
    # Energy (what the backend burns) and carbon (what its grid makes of it) count alike, and
    # nothing else: speed must not buy a dirtier answer.
    "greenest": PolicySpec(weights=Weights(energy=1.0, carbon=1.0)),
    "sovereign-only": PolicySpec(weights=BALANCED, classes=frozenset({"sovereign"})),
}
