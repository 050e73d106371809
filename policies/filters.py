"""Hard constraints: a candidate that fails one is never scored, whatever the weights."""

from __future__ import annotations

from collections.abc import Iterable

from policies.base import Candidate, Constraints, PolicySpec, RequestShape

_ALL_CLASSES = frozenset({"datacenter", "sovereign", "volunteer"})
J_PER_KWH = 3.6e6
# The reasons that waiting may clear (the router answers them with 503 and retry-after).
EJECTED = "ejected after failures"
AT_LIMIT = "at its concurrency limit"


def allowed_classes(policy: PolicySpec, allow_volunteer: bool) -> frozenset[str]:
    classes: frozenset[str] = frozenset(policy.classes) if policy.classes else _ALL_CLASSES
    return classes if allow_volunteer else classes - {"volunteer"}


def constraints(policy: PolicySpec, allow_volunteer: bool) -> Constraints:
    """A tenant's policy as the constraints every one of its requests starts from."""
    return Constraints(
        allowed_classes(policy, allow_volunteer), policy.zones, policy.max_price, policy.max_carbon_g, policy.min_trust
    )


def request_cost(c: Candidate, req: RequestShape) -> float | None:
    """USD for this request's estimated tokens, or None if the price is unknown."""
    p = c.profile
    if p.price_input is None or p.price_output is None:
        return None
    return (req.input_tokens * p.price_input + req.max_output_tokens * p.price_output) / 1e6


def request_carbon_g(c: Candidate, req: RequestShape) -> float | None:
    """gCO2e for this request's estimated tokens, or None if energy or grid intensity is unknown."""
    joules = c.energy.joules(req.input_tokens, req.max_output_tokens)
    if joules is None or c.profile.carbon_intensity is None:
        return None
    return joules * c.profile.carbon_intensity / J_PER_KWH


def reachable(c: Candidate, cons: Constraints) -> str | None:
    """Why the tenant may never use this backend (class, zone, named out), or None."""
    info = c.profile.info
    if info.backend_class not in cons.classes:
        return f"class {info.backend_class} not allowed"
    if cons.zones is not None and info.zone not in cons.zones:
        return f"zone {info.zone} not allowed"
    if cons.only is not None and info.name not in cons.only:
        return "not in provider.only"
    if info.name in cons.ignore:
        return "in provider.ignore"
    return None


def admissible(c: Candidate, cons: Constraints, req: RequestShape) -> str | None:
    """Why the candidate is excluded from this request, or None if it may serve it."""
    return reachable(c, cons) or fits(c, cons, req)


def fits(c: Candidate, cons: Constraints, req: RequestShape) -> str | None:
    """The constraints that depend on the request and the backend's state (``reachable`` aside)."""
    p, stats = c.profile, c.stats
    if stats.ejected:
        return EJECTED
    if p.info.max_concurrency is not None and stats.inflight >= p.info.max_concurrency:
        return AT_LIMIT
    if p.context_length is not None and req.input_tokens + req.max_output_tokens > p.context_length:
        return f"context length {p.context_length} < {req.input_tokens + req.max_output_tokens} tokens"
    if req.needs and p.capabilities is not None and not req.needs <= p.capabilities:
        return "lacks " + ", ".join(sorted(req.needs - p.capabilities))
    if cons.max_price is not None:
        reason = _price(c, cons, req)
        if reason is not None:
            return reason
    if cons.max_carbon_g is not None:
        grams = request_carbon_g(c, req)
        if grams is None or grams > cons.max_carbon_g:
            return "carbon unknown" if grams is None else f"carbon {grams:.3g} g > max_carbon_g"
    if cons.min_trust is not None and c.trust < cons.min_trust:
        return f"trust {c.trust:.2f} < min_trust"
    return None


def _price(c: Candidate, cons: Constraints, req: RequestShape) -> str | None:
    cap = cons.max_price
    assert cap is not None
    p = c.profile
    if p.price_input is None or p.price_output is None:
        return "price unknown"  # an undeclared price can never be shown to be under a ceiling
    if cap.prompt is not None and p.price_input > cap.prompt:
        return f"prompt price {p.price_input:g} > max_price.prompt"
    if cap.completion is not None and p.price_output > cap.completion:
        return f"completion price {p.price_output:g} > max_price.completion"
    cost = request_cost(c, req)
    if cap.request is not None and cost is not None and cost > cap.request:
        return f"request cost {cost:.3g} > max_price.request"
    return None


def split(
    candidates: Iterable[Candidate], cons: Constraints, req: RequestShape
) -> tuple[list[Candidate], dict[str, str]]:
    """Admissible candidates, and the reason each other one was filtered out."""
    kept: list[Candidate] = []
    rejected: dict[str, str] = {}
    for c in candidates:
        reason = admissible(c, cons, req)
        if reason is None:
            kept.append(c)
        else:
            rejected[c.profile.info.name] = reason
    return kept, rejected
