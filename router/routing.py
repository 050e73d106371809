"""Which backends may serve a request, in which order: the model index, the tenant's policy
narrowed by the request's routing fields, and fallback models when a model has no backend.

Everything that does not change while serving (prices, declared or derived energy, grid
intensity, trust, limits) is resolved once into a ``Profile`` per backend and model, and the
backends a tenant may ever reach for a model are cached, so a request only reads live stats,
filters on them, scores and orders.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies import filters, pickers
from policies.base import CLASS_TRUST, Candidate, Constraints, PolicySpec, Profile, RequestShape, Scored
from providers.base import BackendInfo
from router import overrides
from router.backend_stats import StatsBook
from router.config import BackendConfig, FederationConfig
from router.energy import CarbonTable, EcologitsEnergy, EnergyBook, UnknownZone, power_watts, static_estimate
from router.errors import GatewayError, ModelNotFound, NoBackendAvailable
from router.overrides import Override

_TRANSIENT = frozenset({"ejected after failures", "at its concurrency limit"})
_MAX_CACHED = 4096  # (model, constraints) pairs; requests that narrow by name are not cached


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    policy: PolicySpec
    allow_volunteer: bool
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    order: list[Scored]
    rejected: dict[str, str]  # backend -> why it was filtered out (do not mutate: may be shared)
    model: str = ""  # the model planned for: the one asked for, or a fallback


class Planner:
    def __init__(self, backends: Iterable[BackendInfo], stats: StatsBook, exploration: float,
                 rng: random.Random | None = None, config: FederationConfig | None = None) -> None:
        self._infos = {i.name: i for i in backends}
        self._config = config
        self._cfgs: dict[str, BackendConfig] = {b.name: b for b in config.backends} if config else {}
        self._carbon = CarbonTable(config.carbon.intensity_file if config else None)
        self._ecologits = EcologitsEnergy()
        self.energy = EnergyBook()
        self._stats = stats
        self._exploration = exploration
        self._rng = rng or random.Random()
        self._by_model: dict[str, tuple[Profile, ...]] = {}
        self._reach: dict[tuple[str, Constraints], tuple[tuple[Profile, ...], dict[str, str]]] = {}
        self._build_profiles()
        self._fallbacks: dict[str, list[str]] = dict(config.fallback_models) if config else {}
        self._chains = {m: _follow(self._fallbacks, m) for m in self._fallbacks}
        self._constraints: dict[int, tuple[PolicySpec, bool, Constraints]] = {}

    # ---- start-up ---------------------------------------------------------------------------

    def _build_profiles(self) -> None:
        by_model: dict[str, list[Profile]] = {}
        for info in self._infos.values():
            for model in info.models:
                by_model.setdefault(model, []).append(self._profile(info, model))
        self._by_model = {m: tuple(ps) for m, ps in by_model.items()}
        self._reach = {}

    def _profile(self, info: BackendInfo, model: str) -> Profile:
        cfg = self._cfgs.get(info.name)
        price = info.prices.get(model)
        declared = cfg.energy.joules_per_token if cfg and cfg.energy else info.joules_per_token
        hardware = cfg.hardware if cfg else None
        energy = static_estimate(info.backend_class, declared, info.models[model], hardware is not None,
                                 self._ecologits)
        return Profile(
            info=info, model=model,
            price_input=price[0] if price else None, price_output=price[1] if price else None,
            energy=energy, carbon_intensity=self._intensity(info, cfg),
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

    def models_for(self, tenant: Tenant) -> dict[str, list[BackendInfo]]:
        """Every model the tenant may use, with the backends that may serve it to them."""
        cons = self._base(tenant)
        out: dict[str, list[BackendInfo]] = {}
        for model in self._by_model:
            usable = [p.info for p in self._reachable(model, cons)[0]]
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
        cons = self._base(tenant)
        return cons if override is None else overrides.narrow(cons, override, self._infos)

    def plan(self, model: str, tenant: Tenant, shape: RequestShape, override: Override | None = None) -> Plan:
        cons = self.constraints(tenant, override)
        first: GatewayError | None = None
        for m in self.chain(model, tenant, override):
            try:
                return self._plan_model(m, tenant, cons, shape, override)
            except (ModelNotFound, NoBackendAvailable) as exc:
                # A model that exists but is busy says "retry"; prefer that over "not found".
                if first is None or (isinstance(exc, NoBackendAvailable) and isinstance(first, ModelNotFound)):
                    first = exc
        assert first is not None
        raise first

    def _plan_model(self, model: str, tenant: Tenant, cons: Constraints, shape: RequestShape,
                    override: Override | None) -> Plan:
        reach, rejected = self._reachable(model, cons)
        if not reach:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        kept, busy = self._live(reach, cons, shape)
        if busy:
            rejected = {**rejected, **busy}
        if not kept:
            why = "; ".join(f"{n}: {r}" for n, r in busy.items())
            if any(r in _TRANSIENT for r in busy.values()):
                raise NoBackendAvailable(f"No backend can serve `{model}` right now: {why}",
                                         headers={"retry-after": "1"})
            # Nothing that waiting would change (price, context, capabilities, carbon, trust).
            raise ModelNotFound(f"No backend serving `{model}` meets this request's constraints: {why}",
                                param="model")
        scored = pickers.score(kept, shape, tenant.policy.weights)
        return Plan(self._order(scored, shape, override), rejected, model)

    def _live(self, reach: tuple[Profile, ...], cons: Constraints,
              shape: RequestShape) -> tuple[list[Candidate], dict[str, str]]:
        view, estimate, fits = self._stats.view, self.energy.estimate, filters.fits
        kept: list[Candidate] = []
        busy: dict[str, str] = {}
        for p in reach:
            stats = view(p.info.name, p.model)
            c = Candidate(p, stats, estimate(p, stats))
            reason = fits(c, cons, shape)
            if reason is None:
                kept.append(c)
            else:
                busy[p.info.name] = reason
        return kept, busy

    def _order(self, scored: list[Scored], shape: RequestShape, override: Override | None) -> list[Scored]:
        if override is None or not (override.sort or override.order or not override.allow_fallbacks):
            return pickers.order(scored, self._exploration, self._rng.random())
        # A request that says how to order gets exactly that: no exploration.
        if override.sort:
            scored = pickers.sort_by(scored, override.sort, shape)
        if override.order:
            scored = pickers.prefer(scored, override.order, others=True)
        return scored if override.allow_fallbacks else scored[: max(1, len(override.order))]

    def _base(self, tenant: Tenant) -> Constraints:
        """The tenant's constraints, built once per policy object."""
        entry = self._constraints.get(id(tenant.policy))
        if entry is None or entry[0] is not tenant.policy or entry[1] != tenant.allow_volunteer:
            cons = filters.constraints(tenant.policy, tenant.allow_volunteer)
            if len(self._constraints) >= _MAX_CACHED:
                self._constraints.clear()
            entry = self._constraints[id(tenant.policy)] = (tenant.policy, tenant.allow_volunteer, cons)
        return entry[2]

    def _reachable(self, model: str, cons: Constraints) -> tuple[tuple[Profile, ...], dict[str, str]]:
        """The backends serving ``model`` that these constraints may ever reach, and why the
        others may not; cached unless the request itself names backends."""
        key = (model, cons)
        hit = self._reach.get(key)
        if hit is not None:
            return hit
        kept: list[Profile] = []
        rejected: dict[str, str] = {}
        for p in self._by_model.get(model, ()):
            reason = filters.reachable(Candidate(p), cons)
            if reason is None:
                kept.append(p)
            else:
                rejected[p.info.name] = reason
        result = (tuple(kept), rejected)
        if cons.only is None and not cons.ignore:
            if len(self._reach) >= _MAX_CACHED:
                self._reach.clear()
            self._reach[key] = result
        return result

    def observe_power(self, backend: str, headers: Mapping[str, str], still_counted: bool) -> None:
        """A response's power reading (``x-power-watts``), spread over the throughput measured
        there and the requests in flight (this one included: ``still_counted`` says whether the
        stats count it yet)."""
        watts = power_watts(headers)
        if watts is not None:
            stats = self._stats.view(backend)
            self.energy.observe(backend, watts, stats.tokens_per_s, stats.inflight + (0 if still_counted else 1))

    # ---- explanation ------------------------------------------------------------------------

    def explain(self, model: str, tenant: Tenant, shape: RequestShape,
                override: Override | None = None) -> dict[str, Any]:
        """A dry run: per model of the chain, the ranking with score parts and energy, and every
        backend filtered out with its reason. Calls no backend and changes no state."""
        cons = self.constraints(tenant, override)
        models = []
        for m in self.chain(model, tenant, override):
            reach, rejected = self._reachable(m, cons)
            kept, busy = self._live(reach, cons, shape)
            scored = pickers.score(kept, shape, tenant.policy.weights)
            if override is not None:
                scored = self._order(scored, shape, override)
            models.append({
                "model": m,
                "candidates": [_describe(s, shape) for s in scored],
                "filtered": [{"backend": n, "reason": why} for n, why in {**rejected, **busy}.items()],
            })
        return {"tenant": tenant.name, "weights": tenant.policy.weights.model_dump(), "models": models}


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
        if isinstance(content, list) and any(isinstance(part, dict) and part.get("type") == "image_url"
                                             for part in content):
            needs.add("vision")
            break
    return frozenset(needs)


def _describe(s: Scored, shape: RequestShape) -> dict[str, Any]:
    c = s.candidate
    carbon = filters.request_carbon_g(c, shape)
    return {
        "backend": c.info.name, "class": c.info.backend_class, "zone": c.info.zone,
        "score": round(s.score, 4), "parts": {k: round(v, 4) for k, v in s.parts.items()},
        "estimate": {
            "cost_usd": filters.request_cost(c, shape),
            "energy_j": c.energy.joules(shape.input_tokens, shape.max_output_tokens),
            "energy_source": c.energy.source, "carbon_g": carbon,
            "carbon_intensity_g_per_kwh": c.profile.carbon_intensity, "trust": round(c.trust, 4),
        },
        "stats": {"ttft_s": c.stats.ttft_s, "tokens_per_s": c.stats.tokens_per_s,
                  "inflight": c.stats.inflight, "error_rate": c.stats.error_rate},
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
