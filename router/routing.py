"""Which backends may serve a request, in which order: the model index plus the tenant's policy."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from policies import filters, pickers
from policies.base import Candidate, PolicySpec, RequestShape, Scored
from providers.base import BackendInfo
from router.backend_stats import StatsBook
from router.errors import ModelNotFound, NoBackendAvailable


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    policy: PolicySpec
    allow_volunteer: bool
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    order: list[Scored]
    rejected: dict[str, str]


class Planner:
    def __init__(self, backends: Iterable[BackendInfo], stats: StatsBook, exploration: float,
                 rng: random.Random | None = None) -> None:
        self._by_model: dict[str, list[BackendInfo]] = {}
        for info in backends:
            for model in info.models:
                self._by_model.setdefault(model, []).append(info)
        self._stats = stats
        self._exploration = exploration
        self._rng = rng or random.Random()

    def models_for(self, tenant: Tenant) -> dict[str, list[BackendInfo]]:
        """Every model the tenant may use, with the backends that may serve it to them."""
        classes = filters.allowed_classes(tenant.policy, tenant.allow_volunteer)
        zones = tenant.policy.zones
        out: dict[str, list[BackendInfo]] = {}
        for model, infos in self._by_model.items():
            usable = [i for i in infos if i.backend_class in classes and (zones is None or i.zone in zones)]
            if usable:
                out[model] = usable
        return out

    def plan(self, model: str, tenant: Tenant, shape: RequestShape) -> Plan:
        infos = self._by_model.get(model)
        if not infos:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        candidates = [self._candidate(i, model) for i in infos]
        kept, rejected = filters.split(candidates, tenant.policy, tenant.allow_volunteer)
        if not kept:
            if all(r.startswith(("class", "zone")) for r in rejected.values()):
                raise ModelNotFound(
                    f"The model `{model}` does not exist or you do not have access to it.", param="model")
            raise NoBackendAvailable(
                f"No backend can serve `{model}` right now: "
                + "; ".join(f"{name}: {why}" for name, why in rejected.items()),
                headers={"retry-after": "1"},
            )
        scored = pickers.score(kept, shape, tenant.policy.weights)
        return Plan(pickers.order(scored, self._exploration, self._rng.random()), rejected)

    def _candidate(self, info: BackendInfo, model: str) -> Candidate:
        price = info.prices.get(model)
        return Candidate(info, self._stats.view(info.name),
                         price[0] if price else None, price[1] if price else None)
