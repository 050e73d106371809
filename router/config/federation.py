"""The whole config file: its top-level model, the checks across sections, and its loader.

Validated once, here, at the edge; past this package the gateway only sees these typed objects.
Every message names the key and where it stands, so a typo never silently becomes a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from router.carbon import CarbonTable, UnknownZone
from router.config.backends import BackendConfig
from router.config.base import ConfigError, Strict
from router.config.routing import CarbonConfig, LimitsConfig, RoutingConfig
from router.config.tenants import TenantConfig

#: The branches of a union that pydantic names in an error's location (a policy is a preset name or a
#: PolicySpec): they are not keys of the file.
_UNION_TAGS = ("str", "PolicySpec")


class FederationConfig(Strict):
    backends: list[BackendConfig]
    tenants: list[TenantConfig] = []
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()
    carbon: CarbonConfig = CarbonConfig()
    fallback_models: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _unique_names(self) -> FederationConfig:
        if not self.backends:
            raise ValueError("backends: at least one backend is needed")
        for kind, names in (("backend", [b.name for b in self.backends]), ("tenant", [t.name for t in self.tenants])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(dupes)}")
        for b in self.backends:
            if b.api_key and b.resolved_api_key() is None:
                raise ValueError(f"backends[{b.name}].api_key: environment variable {b.api_key[4:]} is not set")
        _check_zones(self)
        _check_fallbacks(self)
        if unknown := set(self.routing.hedging.tenants or ()) - {t.name for t in self.tenants}:
            raise ValueError(f"routing.hedging.tenants: unknown tenant(s) {', '.join(sorted(unknown))}")
        return self

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)


def _check_zones(config: FederationConfig) -> None:
    """Every zone must have a grid intensity, unless the backend declares its own."""
    table = CarbonTable(config.carbon.intensity_file)
    zones = {b.zone for b in config.backends if b.zone is not None}
    for b in config.backends:
        if b.zone is not None and b.carbon_intensity is None:
            try:
                table.intensity(b.zone)
            except UnknownZone as exc:
                raise ValueError(f"backends[{b.name}].zone: {exc}") from None
    for t in config.tenants:
        spec = t.policy_spec()
        for zone in sorted(spec.zones or ()):
            if zone not in zones and table.canonical(zone) is None:
                raise ValueError(f"tenants[{t.name}].policy.zones: unknown zone {zone!r}")


def _check_fallbacks(config: FederationConfig) -> None:
    """Fallback models must exist, and following them must never come back to where it started."""
    known = {m for b in config.backends for m in b.model_map()}
    graphs: list[tuple[str, Mapping[str, Sequence[str]]]] = [("fallback_models", config.fallback_models)]
    graphs += [
        (f"tenants[{t.name}].fallback_models", {**config.fallback_models, **spec.fallback_models})
        for t in config.tenants
        if (spec := t.policy_spec()).fallback_models
    ]
    for where, graph in graphs:
        for model, fallbacks in graph.items():
            for m in (model, *fallbacks):
                if m not in known:
                    raise ValueError(f"{where}[{model}]: unknown model {m!r}")
        for model in graph:
            cycle = _cycle(graph, [model])
            if cycle:
                raise ValueError(f"{where}: fallback cycle {' -> '.join(cycle)}")


def _cycle(graph: Mapping[str, Sequence[str]], path: list[str]) -> list[str] | None:
    for nxt in graph.get(path[-1], ()):
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        found = _cycle(graph, [*path, nxt])
        if found:
            return found
    return None


def parse_config(raw: Any, source: str = "config") -> FederationConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'backends' key")
    try:
        return FederationConfig.model_validate(raw)
    except ValidationError as exc:
        errors = [err for err in exc.errors() if "str" not in err["loc"]] or exc.errors()
        raise ConfigError("\n".join(_describe(err, raw, source) for err in errors)) from None


def load_config(path: str | Path) -> FederationConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_config(raw, str(path))


def _describe(err: Any, raw: dict[str, Any], source: str) -> str:
    if err["type"] == "extra_forbidden":
        parent = _where(err["loc"][:-1], raw)
        return f"{source}: {parent + ': ' if parent else ''}unknown key {err['loc'][-1]!r}"
    where = _where(err["loc"], raw)
    if err["type"] == "missing":
        return f"{source}: {where}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: {where}: {msg}" if where else f"{source}: {msg}"


def _where(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """Render a pydantic location, naming list items by their ``name`` where they have one."""
    parts: list[str] = []
    node: Any = raw
    for i, key in enumerate(loc):
        if isinstance(key, int):
            item = node[key] if isinstance(node, list) and key < len(node) else None
            label = item.get("name") if isinstance(item, dict) else None
            parts[-1] += f"[{label or key}]"
            node = item
            continue
        # The discriminator tag pydantic inserts after a list index is not a key of the file.
        if i > 0 and isinstance(loc[i - 1], int) and key in ("openai", "litellm") and key not in (node or {}):
            continue
        # So is the branch of a union (a policy is a preset name or a PolicySpec).
        if key in _UNION_TAGS and not (isinstance(node, dict) and key in node):
            continue
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)
