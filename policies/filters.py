"""Hard constraints: a candidate that fails one is never scored."""

from __future__ import annotations

from collections.abc import Iterable

from policies.base import Candidate, PolicySpec
from providers.base import BackendClass


def allowed_classes(policy: PolicySpec, allow_volunteer: bool) -> frozenset[BackendClass]:
    classes: frozenset[BackendClass] = policy.classes or frozenset({"datacenter", "sovereign", "volunteer"})
    return classes if allow_volunteer else classes - {"volunteer"}


def admissible(candidate: Candidate, policy: PolicySpec, classes: frozenset[BackendClass]) -> str | None:
    """Why the candidate is excluded, or None if it may serve the request."""
    info = candidate.info
    if info.backend_class not in classes:
        return f"class {info.backend_class} not allowed"
    if policy.zones is not None and info.zone not in policy.zones:
        return f"zone {info.zone} not allowed"
    if candidate.stats.ejected:
        return "ejected after failures"
    if info.max_concurrency is not None and candidate.stats.inflight >= info.max_concurrency:
        return "at its concurrency limit"
    return None


def split(
    candidates: Iterable[Candidate], policy: PolicySpec, allow_volunteer: bool
) -> tuple[list[Candidate], dict[str, str]]:
    """Admissible candidates, and the reason each other one was filtered out."""
    classes = allowed_classes(policy, allow_volunteer)
    kept: list[Candidate] = []
    rejected: dict[str, str] = {}
    for c in candidates:
        reason = admissible(c, policy, classes)
        if reason is None:
            kept.append(c)
        else:
            rejected[c.info.name] = reason
    return kept, rejected
