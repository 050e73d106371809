"""A LiteLLM proxy config read as a fedrouter config: the mapping, field by field, with notes.

Pure: a parsed YAML mapping in, the fedrouter config (a plain mapping, dumped by the caller) and
the notes out. Every key of the input is either carried over, carried over with a note saying how
its meaning differs, or listed in ``Notes.dropped`` with the reason: none is dropped silently. A
secret written literally in the input is never copied: it becomes an ``env:`` reference and a
warning, and nothing derived from its value appears in the notes either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.cli.import_notes import Notes
from router.cli.litellm_settings import apply_settings
from router.fleet.pricing import PriceMap

Json = dict[str, Any]

_ENV_REF = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")
# Providers that speak OpenAI's API: fedrouter serves them with its own client, not through litellm.
_OPENAI_SPEAKERS = frozenset({"openai", "hosted_vllm", "openai_like"})
_OPENAI_URL = "https://api.openai.com/v1"
_DEPLOYMENT_KEYS = frozenset({"model_name", "litellm_params", "model_info", "rpm", "tpm"})
_PER_MINUTE = (
    "fedrouter bounds a backend by requests in flight (max_concurrency), not per minute, and weighs "
    "backends by measured latency, load and errors rather than by rpm/tpm; per-minute limits are per "
    "tenant and key (tenants[].limits, keys create --rpm/--tpm)"
)
# litellm_params that litellm reads from the environment when they are not given per call.
_FROM_ENV = {
    "aws_region_name": "AWS_REGION_NAME",
    "vertex_project": "VERTEXAI_PROJECT",
    "vertex_location": "VERTEXAI_LOCATION",
    "api_version": "AZURE_API_VERSION",
}
_COSTS: tuple[str, ...] = ("input_cost_per_token", "output_cost_per_token")
_SECRET_NAMES = re.compile(r"key|secret|password|credential|(^|_)token$", re.IGNORECASE)


@dataclass(frozen=True)
class Options:
    backend_class: str = "datacenter"
    tenant: str = "default"


def convert(raw: Any, options: Options, environ: Mapping[str, str] | None = None) -> tuple[Json, Notes]:
    """The fedrouter config for a parsed LiteLLM config, and the notes on it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model_list"), list) or not raw["model_list"]:
        raise ValueError("not a LiteLLM proxy config: it needs a non-empty model_list")
    notes = Notes()
    env = os.environ if environ is None else environ
    backends = _backends(raw["model_list"], _Run(options, notes, env))
    if not backends:
        why = "; ".join(f"{where}: {reason}" for where, reason in notes.dropped[:3])
        raise ValueError(f"no deployment of model_list could be converted ({why})")
    out: Json = {"backends": backends, "tenants": [{"name": options.tenant}]}
    apply_settings(raw, out, notes)
    for key in raw:
        if key not in ("model_list", "router_settings", "litellm_settings", "general_settings"):
            _top_level(key, raw[key], notes)
    return out, notes


def _top_level(key: str, value: Any, notes: Notes) -> None:
    if key == "environment_variables" and isinstance(value, dict):
        for name in value:  # values are never shown: they are often secrets
            notes.env.setdefault(str(name), "the value environment_variables gave it in the LiteLLM config")
            if _SECRET_NAMES.search(str(name)) and not _ENV_REF.match(str(value[name])):
                notes.warnings.append(f"{key}.{name}: a literal secret; not written out (set it in the environment)")
        return
    notes.drop(key, "no equivalent section in fedrouter")


@dataclass
class _Run:
    """What converting every deployment shares."""

    options: Options
    notes: Notes
    env: Mapping[str, str]
    prices: PriceMap = field(default_factory=PriceMap)
    taken: set[str] = field(default_factory=set)  # backend names given so far

    def name(self, text: str) -> str:
        """A unique backend name (``NAME_PATTERN``) from a deployment id or model name."""
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60] or "backend"
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}-{n}"
        self.taken.add(name)
        return name


def _backends(deployments: list[Any], run: _Run) -> list[Json]:
    backends: list[Json] = []
    for i, entry in enumerate(deployments):
        where = f"model_list[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("litellm_params"), dict):
            run.notes.drop(where, "not a deployment (it needs model_name and litellm_params)")
            continue
        backend = _deployment(entry, f"model_list[{i}] ({entry.get('model_name')})", run)
        if backend is not None:
            backends.append(backend)
    return backends


def _deployment(entry: Json, where: str, run: _Run) -> Json | None:
    notes = run.notes
    public = entry.get("model_name")
    params: Json = dict(entry["litellm_params"])
    model = params.pop("model", None)
    if not isinstance(public, str) or not isinstance(model, str):
        notes.drop(where, "model_name and litellm_params.model must both be given")
        return None
    if "*" in public or "*" in model:
        notes.drop(where, "wildcard routing: fedrouter serves the models its config names, one by one")
        return None
    known, base = _api_base(params.pop("api_base", None), f"{where}.litellm_params.api_base", notes, run.env)
    if not known:
        return None
    info: Json = dict(entry.get("model_info") or {})
    name = info.get("id") if isinstance(info.get("id"), str) else public
    backend: Json = {"name": run.name(str(name)), "class": run.options.backend_class}
    backend.update(_kind(model, params.pop("custom_llm_provider", None), public, base))
    _api_key(params.pop("api_key", None), backend, f"{where}.litellm_params.api_key", notes)
    _params(params, backend, f"{where}.litellm_params", notes)
    for key in entry:
        if key in ("rpm", "tpm"):
            notes.drop(f"{where}.{key}", _PER_MINUTE)
        elif key not in _DEPLOYMENT_KEYS:
            notes.drop(f"{where}.{key}", "no equivalent for a deployment")
    _model_info(info, backend, f"{where}.model_info", notes, run.prices)
    return backend


def _kind(model: str, custom: Any, public: str, base: str | None) -> Json:
    """A provider that speaks OpenAI's API, at a known URL, is served by fedrouter's own client;
    any other through litellm, with the model named as litellm names it."""
    provider = str(custom) if custom else (model.split("/", 1)[0] if "/" in model else None)
    if provider in _OPENAI_SPEAKERS and (base or provider == "openai"):
        upstream = model.split("/", 1)[1] if model.startswith(f"{provider}/") else model
        return {"type": "openai", "base_url": base or _OPENAI_URL, "models": {public: upstream}}
    if custom and not model.startswith(f"{custom}/"):
        model = f"{custom}/{model}"  # litellm's custom_llm_provider, as the prefix it also reads
    return {"type": "litellm", "models": {public: model}, **({"base_url": base} if base else {})}


def _api_base(value: Any, where: str, notes: Notes, env: Mapping[str, str]) -> tuple[bool, str | None]:
    """Whether the URL can be known here (if not, the deployment is left out), and the URL."""
    if value is None:
        return True, None
    match = _ENV_REF.match(str(value))
    if match is None:
        return True, str(value)
    resolved = env.get(match.group(1))
    if not resolved:
        notes.drop(
            where.rsplit(".", 2)[0],
            f"its api_base comes from os.environ/{match.group(1)}, which is not set where the converter ran, "
            "and fedrouter's base_url takes the URL itself: set it and convert again",
        )
        return False, None
    notes.notes.append(f"{where}: os.environ/{match.group(1)} read here, written as the URL it holds")
    return True, resolved


def env_name(backend: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", backend.upper()) + "_API_KEY"


def _api_key(value: Any, backend: Json, where: str, notes: Notes) -> None:
    if value is None:
        return
    match = _ENV_REF.match(str(value))
    if match is not None:
        backend["api_key"] = f"env:{match.group(1)}"
        notes.env.setdefault(match.group(1), "the API key it held for LiteLLM")
        return
    var = env_name(backend["name"])
    backend["api_key"] = f"env:{var}"
    notes.env.setdefault(var, f"the API key {where} gave literally")
    notes.warnings.append(
        f"{where}: a literal secret; written as env:{var} (set {var} before serving). "
        "The secret itself is not written out: move it out of the LiteLLM config too"
    )


def _params(params: Json, backend: Json, where: str, notes: Notes) -> None:
    """The other litellm_params: timeouts, concurrency, prices; the rest listed with the reason."""
    timeouts: Json = {}
    handlers: dict[str, Callable[[Any], None]] = {
        "timeout": lambda v: timeouts.update(total=float(v)),
        "stream_timeout": lambda v: timeouts.update(first_token=float(v), idle=float(v)),
        "max_parallel_requests": lambda v: backend.update(max_concurrency=int(v)),
    }
    price = {k: params.pop(k) for k in _COSTS if k in params}
    if price:
        _price(price, backend, where, notes)
    for key, value in params.items():
        handle = handlers.get(key)
        if handle is not None:
            _number(handle, value, f"{where}.{key}", notes)
        elif key in ("rpm", "tpm"):
            notes.drop(f"{where}.{key}", _PER_MINUTE)
        elif key in _FROM_ENV and not _SECRET_NAMES.search(key):
            _from_env(_FROM_ENV[key], str(value), f"{where}.{key}", notes)
        else:
            notes.drop(f"{where}.{key}", _param_reason(key))
    if "stream_timeout" in params:
        notes.notes.append(
            f"{where}.stream_timeout: LiteLLM bounds each read of a stream with it; written as "
            "timeouts.first_token and timeouts.idle (the wait for the first token, and between tokens)"
        )
    if timeouts:
        backend["timeouts"] = timeouts


def _number(handle: Callable[[Any], None], value: Any, where: str, notes: Notes) -> None:
    try:
        handle(value)
    except (TypeError, ValueError):
        notes.drop(where, f"{value!r} is not a number")


def _from_env(var: str, value: str, where: str, notes: Notes) -> None:
    """A per-deployment setting litellm also reads from the environment: one value for all."""
    held = notes.env.setdefault(var, value)
    notes.drop(
        where,
        f"no per-backend equivalent; litellm reads {var} from the environment, so set {var}={value} where "
        "fedrouter runs (one value for every backend of that provider)",
    )
    if held != value:
        notes.warnings.append(f"{where}: {value} differs from {held}; one {var} serves every deployment")


def _param_reason(key: str) -> str:
    if key == "max_retries":
        return "retries are gateway-wide in fedrouter (routing.retries_per_backend, routing.max_attempts)"
    if key == "extra_headers":
        return (
            "fedrouter sends no extra headers per backend; a header the upstream requires needs a proxy in front of it"
        )
    if _SECRET_NAMES.search(key):
        return "a credential fedrouter's backends cannot take; litellm reads most from the environment"
    return "not passed on per backend: fedrouter sends the client's request parameters as they are"


def _price(price: Mapping[str, Any], backend: Json, where: str, notes: Notes) -> None:
    try:
        per_million = {k: float(v) * 1e6 for k, v in price.items()}
    except (TypeError, ValueError):
        notes.drop(f"{where}.input_cost_per_token", "not a number")
        return
    backend["price"] = {
        "input": _usd(per_million.get("input_cost_per_token", 0.0)),
        "output": _usd(per_million.get("output_cost_per_token", 0.0)),
    }
    if len(per_million) == 1:
        notes.notes.append(f"{where}: only one of input/output_cost_per_token is given; the other is written as 0")


def _usd(per_million: float) -> float:
    return float(f"{per_million:.6g}")  # 2.5, not 2.4999999999999996


def _model_info(info: Json, backend: Json, where: str, notes: Notes, prices: PriceMap) -> None:
    info.pop("id", None)
    if "price" not in backend:
        costs = {k: info.pop(k) for k in _COSTS if k in info}
        if costs:
            _price(costs, backend, where, notes)
    base_model = info.pop("base_model", None)
    if "price" not in backend and isinstance(base_model, str) and (known := prices.lookup(base_model)):
        backend["price"] = {"input": _usd(known[0]), "output": _usd(known[1])}
        notes.notes.append(f"{where}.base_model: priced as {base_model} in litellm's price map")
    caps = _capabilities(info, where, notes)
    if caps is not None:
        backend["capabilities"] = caps
    if isinstance(info.get("max_input_tokens"), int) and info["max_input_tokens"] > 0:
        backend["context_length"] = info.pop("max_input_tokens")
    for key in info:
        notes.drop(f"{where}.{key}", "no equivalent for a backend")


_FLAGS = {"supports_function_calling": "tools", "supports_vision": "vision", "supports_response_schema": "json_mode"}


def _capabilities(info: Json, where: str, notes: Notes) -> list[str] | None:
    """Capabilities from model_info: fedrouter declares them as a whole list (a backend serves
    only the requests its list covers), so they are written only when every flag is given, or
    for an embedding model; None: not declared, never filtered on."""
    mode = info.pop("mode", "chat")
    if mode not in ("chat", "embedding"):
        notes.drop(f"{where}.mode", f"mode {mode}: fedrouter routes chat, completions and embeddings by endpoint")
    if mode == "embedding":
        for flag in _FLAGS:
            info.pop(flag, None)
        return ["embeddings"]
    if all(flag in info for flag in _FLAGS):
        return [cap for flag, cap in _FLAGS.items() if info.pop(flag) is True]
    for flag in [f for f in _FLAGS if f in info]:
        info.pop(flag)
        notes.drop(
            f"{where}.{flag}",
            "fedrouter declares capabilities as one list; give all of " + ", ".join(_FLAGS) + " to carry them over",
        )
    return None
