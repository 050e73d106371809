"""The model catalogue: what ``/v1/models`` says of each model to one caller.

OpenAI's clients read ``id``, ``object``, ``created`` and ``owned_by`` and ignore the rest; clients
that choose a model at run time (as from OpenRouter's ``/models``) read the rest: the context
length, the price as this tenant pays it, the parameters it takes, the backend classes and zones
that can serve it, and energy and carbon per 1k tokens. All of it is read from the planner's
profiles (the same ones that route requests), narrowed by the caller's policy and key, so the
catalogue never lists a backend the router would not use for this caller.

Where several backends serve a model the top-level figures are the highest among them (the most
this tenant may pay or burn per token, since the router may pick any of them); ``endpoints``
gives each backend's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from policies import filters
from policies.base import Candidate, Constraints, EnergyEstimate, Profile, RequestShape

_J_PER_WH = 3600.0
_NO_TOKENS = RequestShape(0, 0)  # the policy's per-token constraints only: no request yet
# OpenRouter's names for the parameters every chat backend takes through the gateway.
_CHAT = ("frequency_penalty", "logit_bias", "max_tokens", "presence_penalty", "seed", "stop", "temperature", "top_p")
_TOOLS = ("tool_choice", "tools")
_JSON = ("response_format", "structured_outputs")
_EMBEDDINGS = ("dimensions", "encoding_format")


def usable(profiles: Iterable[Profile], cons: Constraints) -> list[Profile]:
    """The profiles whose per-token terms the tenant's policy accepts (price and trust ceilings,
    known carbon where it caps carbon): a backend failing them serves none of its requests."""
    return [p for p in profiles if filters.fits(Candidate(p), cons, _NO_TOKENS) is None]


def per_token(usd_per_million: float | None) -> str:
    """USD per token as OpenRouter writes it: a plain decimal string. An undeclared price is
    billed at 0 (see router.pipeline.metering), so it is shown as what the tenant pays: "0"."""
    value = Decimal(repr(usd_per_million or 0.0)) / 1_000_000
    return format(value.normalize(), "f") if value else "0"


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def _energy(e: EnergyEstimate, intensity: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wh and gCO2e per 1k prompt and completion tokens."""
    wh = [None if j is None else j * 1000 / _J_PER_WH for j in (e.j_in, e.j_out)]
    grams = [None if w is None or intensity is None else w / 1000 * intensity for w in wh]
    energy = {"prompt_wh": _round(wh[0]), "completion_wh": _round(wh[1]), "source": e.source}
    carbon = {"prompt_g": _round(grams[0]), "completion_g": _round(grams[1]), "grid_g_per_kwh": intensity}
    return energy, carbon


def endpoint(p: Profile, estimate: EnergyEstimate) -> dict[str, Any]:
    energy, carbon = _energy(estimate, p.carbon_intensity)
    return {
        "backend": p.info.name,
        "class": p.info.backend_class,
        "zone": p.info.zone,
        "pricing": {"prompt": per_token(p.price_input), "completion": per_token(p.price_output)},
        "context_length": p.context_length,
        "energy_per_1k_tokens": energy,
        "carbon_per_1k_tokens": carbon,
    }


def supported_parameters(profiles: Sequence[Profile]) -> list[str]:
    """What at least one backend takes (the router sends a request only to a backend able to
    serve it); a backend that declares no capabilities is not narrowed."""
    params: set[str] = set()
    for p in profiles:
        caps = p.capabilities
        if caps == {"embeddings"}:
            params.update(_EMBEDDINGS)
            continue
        params.update(_CHAT)
        if caps is None or "tools" in caps:
            params.update(_TOOLS)
        if caps is None or "json_mode" in caps:
            params.update(_JSON)
        if caps is None or "embeddings" in caps:
            params.update(_EMBEDDINGS)
    return sorted(params)


def _highest(values: Iterable[Any]) -> Any:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def model_entry(
    model: str, profiles: Sequence[Profile], estimates: Sequence[EnergyEstimate], created: int
) -> dict[str, Any]:
    """One model as the catalogue lists it: OpenAI's four fields, then the rest."""
    endpoints = [endpoint(p, e) for p, e in zip(profiles, estimates, strict=True)]
    classes = sorted({p.info.backend_class for p in profiles})
    top = {
        part: {k: _highest(e[part][k] for e in endpoints) for k in keys}
        for part, keys in (
            ("energy_per_1k_tokens", ("prompt_wh", "completion_wh")),
            ("carbon_per_1k_tokens", ("prompt_g", "completion_g")),
        )
    }
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "fedrouter:" + "+".join(classes),
        "context_length": _highest(p.context_length for p in profiles),
        "pricing": {
            "prompt": per_token(_highest(p.price_input or 0.0 for p in profiles)),
            "completion": per_token(_highest(p.price_output or 0.0 for p in profiles)),
        },
        "supported_parameters": supported_parameters(profiles),
        "classes": classes,
        "zones": sorted({p.info.zone for p in profiles if p.info.zone is not None}),
        **top,
        "endpoints": endpoints,
    }


__all__ = ["endpoint", "model_entry", "per_token", "supported_parameters", "usable"]
