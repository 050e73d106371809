"""A LiteLLM config's settings sections (``litellm_settings``, ``router_settings``,
``general_settings``) read as fedrouter's routing, limits, fallback models and tenant policy.

LiteLLM accepts most router keys in both ``litellm_settings`` and ``router_settings``; both are
read, ``router_settings`` last, so it wins as it does in LiteLLM. What has no equivalent is listed
with the reason; what is set outside the config in fedrouter (Redis, the ledger's database, the
admin key) becomes a line of the environment to set, never with a secret's value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.cli.import_notes import Notes

Json = dict[str, Any]

_ENV_REF = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")
_STRATEGIES: dict[str, tuple[str | Json, str]] = {
    "simple-shuffle": ("balanced", "LiteLLM picks at random (weighted by rpm/tpm); fedrouter scores backends"),
    "latency-based-routing": ("fastest", "the preset that weighs measured latency"),
    "cost-based-routing": ("cheapest", "the preset that weighs price"),
    "least-busy": ({"weights": {"load": 1.0, "latency": 0.1}}, "weights on requests in flight"),
    "usage-based-routing": ("balanced", "fedrouter does not route by rpm/tpm headroom"),
    "usage-based-routing-v2": ("balanced", "fedrouter does not route by rpm/tpm headroom"),
}
_PERIODS = {"1d": "daily", "24h": "daily", "30d": "monthly", "1mo": "monthly"}
_REASONS = {
    "content_policy_fallbacks": "fedrouter falls back when a model has no backend available, not on a refusal",
    "drop_params": "always on for litellm backends; OpenAI-compatible backends get the request as the client sent it",
    "set_verbose": "use fedrouter serve --log-level",
    "json_logs": "use fedrouter serve --log-level",
    "success_callback": "fedrouter records every request in its ledger and Prometheus metrics (fedrouter export)",
    "failure_callback": "fedrouter records every request in its ledger and Prometheus metrics (fedrouter export)",
    "callbacks": "fedrouter records every request in its ledger and Prometheus metrics (fedrouter export)",
    "cache": "fedrouter caches no answers",
    "cache_params": "fedrouter caches no answers",
    "enable_pre_call_checks": "always on: fedrouter checks a request's size against each backend's context_length",
    "routing_strategy_args": "the presets take no arguments",
}


@dataclass
class _State:
    """What the settings sections add to the converted config, applied once all are read."""

    out: Json
    notes: Notes
    models: set[str]
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    defaults: list[str] = field(default_factory=list)
    timeouts: Json = field(default_factory=dict)
    redis: Json = field(default_factory=dict)

    def routing(self, **values: Any) -> None:
        self.out.setdefault("routing", {}).update(values)

    def limits(self, **values: Any) -> None:
        self.out.setdefault("limits", {}).update(values)

    def tenant(self) -> Json:
        return self.out["tenants"][0]


def _fallbacks(s: _State, value: Any, where: str) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            s.notes.drop(where, f"{item!r}: expected {{model: [fallback models]}}")
            continue
        for model, targets in item.items():
            for target in targets if isinstance(targets, list) else [targets]:
                if model not in s.models or target not in s.models:
                    unknown = model if model not in s.models else target
                    s.notes.drop(f"{where}[{model}]", f"{unknown!r} is not among the converted model names")
                elif target not in s.fallbacks.setdefault(model, []):
                    s.fallbacks[model].append(target)
    if where.endswith("context_window_fallbacks"):
        s.notes.notes.append(
            f"{where}: merged into fallback_models; fedrouter tries them when no backend fits the request's "
            "size (declare context_length) or none is available"
        )


def _defaults(s: _State, value: Any, where: str) -> None:
    for target in value if isinstance(value, list) else [value]:
        if target in s.models:
            s.defaults.append(target)
        else:
            s.notes.drop(where, f"{target!r} is not among the converted model names")


def _retries(s: _State, value: Any, where: str) -> None:
    attempts = max(1, min(10, int(value) + 1))
    s.routing(max_attempts=attempts)
    s.notes.notes.append(
        f"{where}: {value} retries -> routing.max_attempts {attempts} (attempts per request, across backends)"
    )


def _timeout(s: _State, value: Any, where: str) -> None:
    s.routing(deadline_s=float(value))
    s.timeouts["total"] = float(value)
    s.notes.notes.append(f"{where}: routing.deadline_s, and timeouts.total of every backend that sets none")


def _stream_timeout(s: _State, value: Any, where: str) -> None:
    s.timeouts.update(first_token=float(value), idle=float(value))


def _allowed_fails(s: _State, value: Any, where: str) -> None:
    s.routing(eject_after_failures=int(value) + 1)
    s.notes.notes.append(
        f"{where}: a backend is ejected after {int(value) + 1} failures in a row "
        "(LiteLLM counts them per minute; fedrouter also ejects on routing.eject_error_rate)"
    )


def _strategy(s: _State, value: Any, where: str) -> None:
    policy, how = _STRATEGIES.get(str(value), (None, ""))
    if policy is None:
        s.notes.drop(where, f"unknown strategy {value!r}: the tenant keeps the balanced policy")
        return
    s.tenant()["policy"] = policy
    s.notes.notes.append(f"{where}: {value} -> tenant {s.tenant()['name']}'s policy {policy} ({how})")


def _aliases(s: _State, value: Any, where: str) -> None:
    for alias, target in (value or {}).items():
        model = target.get("model") if isinstance(target, dict) else target
        if model not in s.models or alias in s.models:
            s.notes.drop(f"{where}[{alias}]", f"{model!r} is not a converted model, or {alias!r} is taken")
            continue
        for backend in s.out["backends"]:
            if model in backend["models"]:
                backend["models"][alias] = backend["models"][model]
        s.models.add(alias)
        if isinstance(target, dict) and target.get("hidden"):
            s.notes.drop(f"{where}[{alias}].hidden", "fedrouter lists every model it serves")


def _redis(s: _State, value: Any, where: str) -> None:
    s.redis[where.rsplit(".", 1)[1]] = value


def _budget(s: _State, value: Any, where: str) -> None:
    key = where.rsplit(".", 1)[1]
    s.tenant().setdefault("budgets", [{"metric": "usd", "period": "total"}])
    budget = s.tenant()["budgets"][0]
    if key == "max_budget":
        budget["hard"] = float(value)
    elif str(value) in _PERIODS:
        budget["period"] = _PERIODS[str(value)]
    else:
        s.notes.drop(where, f"{value!r}: fedrouter budgets run daily, monthly or in total")


_ROUTER: dict[str, Callable[[_State, Any, str], None]] = {
    "fallbacks": _fallbacks,
    "context_window_fallbacks": _fallbacks,
    "default_fallbacks": _defaults,
    "num_retries": _retries,
    "timeout": _timeout,
    "request_timeout": _timeout,
    "stream_timeout": _stream_timeout,
    "allowed_fails": _allowed_fails,
    "cooldown_time": lambda s, v, w: s.routing(eject_seconds=float(v)),
    "retry_after": lambda s, v, w: s.routing(backoff_initial=float(v), backoff_max=max(1.0, float(v))),
    "routing_strategy": _strategy,
    "model_group_alias": _aliases,
    "redis_host": _redis,
    "redis_port": _redis,
    "redis_password": _redis,
    "redis_url": _redis,
    "max_budget": _budget,
    "budget_duration": _budget,
}


def apply_settings(raw: Json, out: Json, notes: Notes) -> None:
    s = _State(out, notes, {m for b in out["backends"] for m in b["models"]})
    for section in ("litellm_settings", "router_settings"):
        values = raw.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            notes.drop(section, "not a mapping")
            continue
        for key, value in values.items():
            handle = _ROUTER.get(key)
            if handle is None:
                notes.drop(f"{section}.{key}", _REASONS.get(key, "no equivalent in fedrouter"))
                continue
            try:
                handle(s, value, f"{section}.{key}")
            except (TypeError, ValueError, AttributeError):
                notes.drop(f"{section}.{key}", f"{value!r} is not of the form LiteLLM documents")
    general = raw.get("general_settings")
    if isinstance(general, dict):
        for key, value in general.items():
            try:
                _general(s, key, value)
            except (TypeError, ValueError):
                notes.drop(f"general_settings.{key}", "not a number")
    elif general is not None:
        notes.drop("general_settings", "not a mapping")
    _finish(s)


def _general(s: _State, key: str, value: Any) -> None:
    where = f"general_settings.{key}"
    ref = _ENV_REF.match(str(value))
    if key == "master_key":
        held = f"in {ref.group(1)}" if ref else "written in its config"
        s.notes.env.setdefault(
            "FEDROUTER_ADMIN_KEY", f"an admin key of 16+ characters (LiteLLM's master key was {held})"
        )
        if ref is None:
            s.notes.warnings.append(
                f"{where}: a literal secret; not written out (move it out of the LiteLLM config too)"
            )
        s.notes.notes.append(
            f"{where}: fedrouter's admin key serves the admin API only; clients that called with the master key "
            f"can keep it: fedrouter keys import --tenant {s.tenant()['name']} --sha256 <its SHA-256>"
        )
    elif key == "database_url":
        s.notes.env.setdefault(
            "FEDROUTER_LEDGER",
            "a postgresql:// URL (fedrouter's own tables; LiteLLM's spend logs are not carried over)",
        )
    elif key in ("max_parallel_requests", "global_max_parallel_requests"):
        s.limits(max_concurrency=int(value))
    elif key == "max_request_size_mb":
        s.limits(max_body_bytes=int(float(value) * 1024 * 1024))
    else:
        s.notes.drop(where, "no equivalent in fedrouter")


def _finish(s: _State) -> None:
    for model in sorted(s.models):
        if model not in s.fallbacks:
            for target in s.defaults:
                if target != model:
                    s.fallbacks.setdefault(model, []).append(target)
    graph: dict[str, list[str]] = {}
    for model, targets in s.fallbacks.items():
        for target in targets:
            if _reaches(graph, target, model):
                s.notes.drop(f"fallbacks[{model}] -> {target}", "it would close a cycle, which fedrouter refuses")
            else:
                graph.setdefault(model, []).append(target)
    if graph:
        s.out["fallback_models"] = graph
    for backend in s.out["backends"]:
        if s.timeouts:
            backend["timeouts"] = {**s.timeouts, **backend.get("timeouts", {})}
    if s.redis:
        s.notes.env.setdefault("FEDROUTER_STATE", _redis_url(s.redis))
    _check_budget(s)


def _redis_url(parts: Json) -> str:
    """The --state URL to give, from LiteLLM's Redis settings; never with a password's value."""
    if "redis_url" in parts:
        return "the redis:// URL of LiteLLM's redis_url (not shown: it may hold a password), or serve --state URL"
    shown = {k: (f"${m.group(1)}" if (m := _ENV_REF.match(str(v))) else v) for k, v in parts.items()}
    password = ":<redis_password>@" if "redis_password" in parts else ""
    host, port = shown.get("redis_host", "HOST"), shown.get("redis_port", 6379)
    return f"redis://{password}{host}:{port}/0 (or serve --state URL): limits, budgets and stats shared by replicas"


def _check_budget(s: _State) -> None:
    budgets = s.tenant().get("budgets")
    if budgets and "hard" not in budgets[0]:
        del s.tenant()["budgets"]
        s.notes.drop("litellm_settings.budget_duration", "a period without max_budget sets no limit")


def _reaches(graph: dict[str, list[str]], start: str, goal: str) -> bool:
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, ()))
    return False
