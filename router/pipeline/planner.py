"""Which backends may serve a request, in which order: the model index, the tenant's policy
narrowed by the request's routing fields, and fallback models when a model has no backend.

Everything that does not change while serving (prices, declared or derived energy, grid
intensity, trust, limits) is resolved once into a ``Profile`` per backend and model, and the
backends a tenant may ever reach for a model are cached, so a request only reads live stats,
filters on them, scores and orders. A model served by more than K backends (``consider``) is not
scored whole on each request: see ``policies.selection`` for how, and why.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, NoReturn

from policies import filters, pickers, selection
from policies.base import CLASS_TRUST, Constraints, PolicySpec, Profile, RequestShape, Scored
from policies.selection import Admitted, Group, Ranking, Reach
from providers.base import BackendInfo
from router.carbon import CarbonTable, UnknownZone
from router.config import BackendConfig, FederationConfig
from router.errors import GatewayError, ModelNotFound, NoBackendAvailable
from router.fleet.backend_stats import StatsBook
from router.fleet.energy import EcologitsEnergy, EnergyBook, power_watts, static_estimate
from router.pipeline import overrides
from router.pipeline.overrides import Override
from router.state.base import store_key
from router.tenancy.tenants import Tenant

_TRANSIENT = frozenset({filters.EJECTED, filters.AT_LIMIT})
_MAX_CACHED = 4096  # (model, constraints) pairs and tenant policies


class Plan(NamedTuple):  # a tuple: built on every request, and cheaper to build than a dataclass
    order: list[Scored]
    # backend -> why it was filtered out (do not mutate: may be shared). For a large group, only
    # the backends examined, and keys in parentheses (no backend name can take them) count the
    # others: "(not examined)", "(not listed)".
    rejected: dict[str, str]
    model: str = ""  # the model planned for: the one asked for, or a fallback


class Planner:
    def __init__(
        self,
        backends: Iterable[BackendInfo],
        stats: StatsBook,
        exploration: float,
        rng: random.Random | None = None,
        config: FederationConfig | None = None,
        *,
        consider: int = selection.CONSIDER,
        refresh_s: float = selection.REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._infos = {i.name: i for i in backends}
        self._config = config
        self._cfgs: dict[str, BackendConfig] = {b.name: b for b in config.backends} if config else {}
        self._carbon = CarbonTable(config.carbon.intensity_file if config else None)
        self._ecologits = EcologitsEnergy()
        self.energy = EnergyBook()
        self._stats = stats
        self._exploration = exploration
        self._rng = rng or random.Random()
        self._consider = consider  # K: see policies.selection
        self._refresh_s = refresh_s
        self._clock = clock
        self._by_model: dict[str, tuple[Profile, ...]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._groups: dict[tuple[str, Constraints], Group] = {}
        self._build_profiles()
        self._fallbacks: dict[str, list[str]] = dict(config.fallback_models) if config else {}
        self._chains = {m: _follow(self._fallbacks, m) for m in self._fallbacks}
        self._policies: dict[int, _Policy] = {}  # by id of the policy object

    # ---- start-up ---------------------------------------------------------------------------

    def _build_profiles(self) -> None:
        by_model: dict[str, list[Profile]] = {}
        for info in self._infos.values():
            for model in info.models:
                by_model.setdefault(model, []).append(self._profile(info, model))
        self._by_model = {m: tuple(ps) for m, ps in by_model.items()}
        self._keys = {m: tuple(store_key(p.info.name, m) for p in ps) for m, ps in by_model.items()}
        self._groups = {}
        self._policies = {}  # their memoised groups are of the old profiles

    def _profile(self, info: BackendInfo, model: str) -> Profile:
        cfg = self._cfgs.get(info.name)
        price = info.prices.get(model)
        declared = cfg.energy.joules_per_token if cfg and cfg.energy else info.joules_per_token
        hardware = cfg.hardware if cfg else None
        energy = static_estimate(
            info.backend_class, declared, info.models[model], hardware is not None, self._ecologits
        )
        return Profile(
            info=info,
            model=model,
            price_input=price[0] if price else None,
            price_output=price[1] if price else None,
            energy=energy,
            carbon_intensity=self._intensity(info, cfg),
            trust=cfg.trust if cfg and cfg.trust is not None else CLASS_TRUST[info.backend_class],
            context_length=cfg.context_length if cfg else None,
            capabilities=frozenset(cfg.capabilities) if cfg and cfg.capabilities is not None else None,
            hardware_watts=hardware.count * hardware.watts if hardware else None,
        )

    def _intensity(self, info: BackendInfo, cfg: BackendConfig | None) -> float | None:
        if cfg is not None and cfg.carbon_intensity is not None:
            return cfg.carbon_intensity
        try:
            return self._carbon.intensity(info.zone)
        except UnknownZone:
            return None  # only without a config: a configured zone was checked at load

    def reload_carbon(self) -> int:
        """Re-read the intensity file (blocking: run it off the event loop); zones it sets."""
        return self._carbon.refresh()

    def apply_carbon(self) -> None:
        """Take the re-read intensities into the profiles (on the event loop: a single swap)."""
        self._build_profiles()

    # ---- per request ------------------------------------------------------------------------

    def models_for(self, tenant: Tenant) -> dict[str, list[Profile]]:
        """Every model the tenant may use, with the profiles of the backends that may serve it to them."""
        cons = self._policy(tenant).cons
        out: dict[str, list[Profile]] = {}
        for model in self._by_model:
            usable = list(self._reach(model, cons, full=False).group.profiles)
            if usable:
                out[model] = usable
        return out

    def chain(self, model: str, tenant: Tenant, override: Override | None = None) -> list[str]:
        """The model asked for, then its fallbacks: the request's ``models`` if it names any,
        else the tenant's or the federation's ``fallback_models``."""
        if override is not None and override.models is not None:
            return list(dict.fromkeys((model, *override.models)))
        own = tenant.policy.fallback_models
        if not own:
            return [model, *self._chains.get(model, ())]
        return [model, *_follow({**self._fallbacks, **own}, model)]

    def constraints(self, tenant: Tenant, override: Override | None = None) -> Constraints:
        cons = self._policy(tenant).cons
        return cons if override is None else overrides.narrow(cons, override, self._infos)

    def plan(self, model: str, tenant: Tenant, shape: RequestShape, override: Override | None = None) -> Plan:
        if override is None:  # the common request: the tenant's own constraints, their groups memoised
            entry = self._policy(tenant)
            cons, memo = entry.cons, entry.reach
        else:
            cons, memo = overrides.narrow(self._policy(tenant).cons, override, self._infos), None
        first: GatewayError | None = None
        for m in self.chain(model, tenant, override):
            try:
                return self._plan_model(m, tenant, cons, shape, override, memo)
            except (ModelNotFound, NoBackendAvailable) as exc:
                # A model that exists but is busy says "retry"; prefer that over "not found".
                if first is None or (isinstance(exc, NoBackendAvailable) and isinstance(first, ModelNotFound)):
                    first = exc
        assert first is not None
        raise first

    def _plan_model(
        self,
        model: str,
        tenant: Tenant,
        cons: Constraints,
        shape: RequestShape,
        override: Override | None,
        memo: dict[str, Reach] | None,
    ) -> Plan:
        r = memo.get(model) if memo is not None else None
        if r is None:
            r = self._reach(model, cons, full=False)
            if memo is not None:
                memo[model] = r
        if not r.size:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        ranking = None
        if r.size <= self._consider or r.adhoc or (override is not None and override.sort is not None):
            got = self._admit_all(r, cons, shape)
        else:
            ranking = r.group.ranking(
                tenant.policy.weights.mix,
                shape,
                self._clock,
                self._refresh_s,
                self._stats.view_key,
                self.energy.estimate,
            )
            got = self._admit_best(r, ranking, cons, shape, override)
        if not got.candidates:
            _refuse(model, got.busy)
        wishes = override is not None and (override.sort or override.order or not override.allow_fallbacks)
        draw = None if wishes else self._rng.random()
        if (
            ranking is not None
            and draw is not None
            and draw < self._exploration
            and all(c.measured for c in got.candidates)
        ):
            got = _merge(got, self._explore(r, ranking, cons, shape, got))
        # In a large group ties fall by the ranking, else by the order of the config.
        scored = self._order(pickers.score(got.candidates, shape, tenant.policy.weights), shape, override, draw)
        rejected = r.rejected
        if got.busy or got.examined < r.size:
            rejected = {**rejected, **got.busy}
            if got.examined < r.size:  # the ledger's record says what was not looked at
                rejected["(not examined)"] = f"{r.size - got.examined} backends ranked below those considered"
        return Plan(scored, rejected, model)

    def _admit_all(self, r: Reach, cons: Constraints, shape: RequestShape) -> Admitted:
        return selection.admit(
            r.group, range(len(r.group.profiles)), cons, shape, self._stats.view_key, self.energy.estimate, skip=r.skip
        )

    def _admit_best(
        self, r: Reach, ranking: Ranking, cons: Constraints, shape: RequestShape, override: Override | None
    ) -> Admitted:
        """The first K admissible of the group's ranking, and any backend the request names first."""
        view, estimate, group = self._stats.view_key, self.energy.estimate, r.group
        got = selection.admit(group, ranking.order, cons, shape, view, estimate, skip=r.skip, want=self._consider)
        if override is not None and override.order:
            have = set(got.positions) | {group.index.get(n, -1) for n in got.busy}
            named = [i for n in override.order if (i := group.index.get(n, -1)) >= 0 and i not in have]
            got = _merge(got, selection.admit(group, named, cons, shape, view, estimate, skip=r.skip))
        return got

    def _explore(self, r: Reach, ranking: Ranking, cons: Constraints, shape: RequestShape, got: Admitted) -> Admitted:
        """The best unmeasured backend, when none of those considered is unmeasured."""
        view, estimate, group = self._stats.view_key, self.energy.estimate, r.group
        taken = set(got.positions) | {group.index.get(n, -1) for n in got.busy}
        return selection.explore(group, ranking, taken, cons, shape, view, estimate, self._consider, r.skip)

    def _order(
        self, scored: list[Scored], shape: RequestShape, override: Override | None, draw: float | None
    ) -> list[Scored]:
        if draw is not None:
            return pickers.order(scored, self._exploration, draw)
        assert override is not None
        # A request that says how to order gets exactly that: no exploration.
        if override.sort:
            scored = pickers.sort_by(scored, override.sort, shape)
        if override.order:
            scored = pickers.prefer(scored, override.order, others=True)
        return scored if override.allow_fallbacks else scored[: max(1, len(override.order))]

    def _policy(self, tenant: Tenant) -> _Policy:
        """The tenant's constraints, built once per policy object."""
        entry = self._policies.get(id(tenant.policy))
        if entry is None or entry.spec is not tenant.policy or entry.allow_volunteer != tenant.allow_volunteer:
            if len(self._policies) >= _MAX_CACHED:
                self._policies.clear()
            entry = self._policies[id(tenant.policy)] = _Policy(
                tenant.policy, tenant.allow_volunteer, filters.constraints(tenant.policy, tenant.allow_volunteer)
            )
        return entry

    def _reach(self, model: str, cons: Constraints, full: bool) -> Reach:
        """The backends serving ``model`` that these constraints may ever reach, and why the
        others may not; the group is cached per (model, constraints without names)."""
        base = cons if cons.only is None and not cons.ignore else replace(cons, only=None, ignore=frozenset())
        key = (model, base)
        group = self._groups.get(key)
        if group is None:
            group = selection.build(self._by_model.get(model, ()), self._keys.get(model, ()), base, self._consider)
            if len(self._groups) >= _MAX_CACHED:
                self._groups.clear()
            self._groups[key] = group
        return selection.reach(group, cons, full, self._consider)

    def observe_power(self, backend: str, headers: Mapping[str, str], still_counted: bool) -> None:
        """A response's power reading (``x-power-watts``), spread over the throughput measured
        there and the requests in flight (this one included: ``still_counted`` says whether the
        stats count it yet)."""
        watts = power_watts(headers)
        if watts is not None:
            stats = self._stats.view(backend)
            self.energy.observe(backend, watts, stats.tokens_per_s, stats.inflight + (0 if still_counted else 1))

    # ---- explanation ------------------------------------------------------------------------

    def explain(
        self, model: str, tenant: Tenant, shape: RequestShape, override: Override | None = None
    ) -> dict[str, Any]:
        """A dry run: per model of the chain, the ranking with score parts and energy, and every
        backend filtered out with its reason. Calls no backend and changes no state. Complete,
        so linear in the backends serving the model, where a request considers at most K."""
        cons = self.constraints(tenant, override)
        models = []
        for m in self.chain(model, tenant, override):
            r = self._reach(m, cons, full=True)
            got = self._admit_all(r, cons, shape)
            scored = pickers.score(got.candidates, shape, tenant.policy.weights)
            if override is not None:
                wishes = override.sort or override.order or not override.allow_fallbacks
                scored = self._order(scored, shape, override, None if wishes else self._rng.random())
            models.append(
                {
                    "model": m,
                    "candidates": [_describe(s, shape) for s in scored],
                    "filtered": [{"backend": n, "reason": why} for n, why in {**r.rejected, **got.busy}.items()],
                }
            )
        return {"tenant": tenant.name, "weights": tenant.policy.weights.model_dump(), "models": models}


class _Policy:
    """A tenant policy as the planner uses it: its constraints, and its groups by model."""

    __slots__ = ("allow_volunteer", "cons", "reach", "spec")

    def __init__(self, spec: PolicySpec, allow_volunteer: bool, cons: Constraints) -> None:
        self.spec = spec
        self.allow_volunteer = allow_volunteer
        self.cons = cons
        self.reach: dict[str, Reach] = {}


def _refuse(model: str, busy: Mapping[str, str]) -> NoReturn:
    why = "; ".join(f"{n}: {r}" for n, r in busy.items())
    if any(r in _TRANSIENT for r in busy.values()):
        raise NoBackendAvailable(f"No backend can serve `{model}` right now: {why}", headers={"retry-after": "1"})
    # Nothing that waiting would change (price, context, capabilities, carbon, trust).
    raise ModelNotFound(f"No backend serving `{model}` meets this request's constraints: {why}", param="model")


def _merge(a: Admitted, b: Admitted) -> Admitted:
    return Admitted(
        a.positions + b.positions, a.candidates + b.candidates, {**a.busy, **b.busy}, a.examined + b.examined
    )


def request_needs(endpoint: str, payload: Mapping[str, Any]) -> frozenset[str]:
    """The capabilities a request uses: tools, JSON output, images in its messages, embeddings."""
    if endpoint == "embeddings":
        return frozenset({"embeddings"})
    needs: set[str] = set()
    if payload.get("tools") or payload.get("functions"):
        needs.add("tools")
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json_mode")
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "image_url" for part in content
        ):
            needs.add("vision")
            break
    return frozenset(needs)


def _describe(s: Scored, shape: RequestShape) -> dict[str, Any]:
    c = s.candidate
    carbon = filters.request_carbon_g(c, shape)
    return {
        "backend": c.info.name,
        "class": c.info.backend_class,
        "zone": c.info.zone,
        "score": round(s.score, 4),
        "parts": {k: round(v, 4) for k, v in s.parts.items()},
        "estimate": {
            "cost_usd": filters.request_cost(c, shape),
            "energy_j": c.energy.joules(shape.input_tokens, shape.max_output_tokens),
            "energy_source": c.energy.source,
            "carbon_g": carbon,
            "carbon_intensity_g_per_kwh": c.profile.carbon_intensity,
            "trust": round(c.trust, 4),
        },
        "stats": {
            "ttft_s": c.stats.ttft_s,
            "tokens_per_s": c.stats.tokens_per_s,
            "inflight": c.stats.inflight,
            "error_rate": c.stats.error_rate,
        },
    }


def _follow(graph: Mapping[str, Sequence[str]], model: str) -> tuple[str, ...]:
    """A model's fallbacks, followed transitively in order; safe on cycles (a tenant added at
    run time was not checked for them)."""
    out: list[str] = []
    stack = list(reversed(graph.get(model, ())))
    while stack:
        m = stack.pop()
        if m != model and m not in out:
            out.append(m)
            stack.extend(reversed(graph.get(m, ())))
    return tuple(out)
