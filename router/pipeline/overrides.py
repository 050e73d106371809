"""Per-request routing fields, as OpenRouter names them: ``provider`` and ``models``.

``provider`` may hold ``order``, ``only``, ``ignore`` (backend names), ``allow_fallbacks``,
``sort`` (``price`` | ``latency`` | ``throughput``), ``max_price`` (``{prompt, completion}`` USD
per 1M tokens, ``request`` USD for the request) and ``data_collection`` (``deny`` keeps the
request off volunteer nodes). ``models`` lists the models to try, in order, after ``model`` when
it has no available backend. A request may only narrow its tenant's policy: a field that would
widen it is refused with 403 naming the field. Neither field is ever sent upstream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from policies.base import Constraints, MaxPrice
from providers.base import BackendInfo
from router.errors import InvalidRequest, PermissionDenied

FIELDS = ("provider", "models")
SORTS = ("price", "latency", "throughput")
_KNOWN = frozenset(
    {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price", "data_collection", "require_parameters"}
)
# A client's list of names is walked per request, and each name may become a planner cache key: an
# unbounded list (9 MB once) blocks the loop and flushes that cache. OpenRouter takes a handful.
MAX_NAMES = 8
MAX_NAME_CHARS = 256


@dataclass(frozen=True, slots=True)
class Override:
    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str | None = None
    max_price: MaxPrice | None = None
    data_collection: str | None = None
    models: tuple[str, ...] | None = None


def parse(payload: Mapping[str, Any]) -> Override | None:
    """The request's routing fields, or None if it has none; 400 if they are malformed."""
    if "provider" not in payload and "models" not in payload:
        return None
    provider = payload.get("provider")
    if provider is None:
        provider = {}
    if not isinstance(provider, dict):
        raise _bad("provider", "an object")
    unknown = sorted(set(provider) - _KNOWN)
    if unknown:
        raise InvalidRequest(
            f"Unknown routing field 'provider.{unknown[0]}'.", param=f"provider.{unknown[0]}", code="invalid_value"
        )
    sort = provider.get("sort")
    if sort is not None and sort not in SORTS:
        raise _bad("provider.sort", "one of " + ", ".join(repr(s) for s in SORTS))
    collection = provider.get("data_collection")
    if collection is not None and collection not in ("allow", "deny"):
        raise _bad("provider.data_collection", "'allow' or 'deny'")
    allow = provider.get("allow_fallbacks", True)
    if not isinstance(allow, bool):
        raise _bad("provider.allow_fallbacks", "a boolean")
    only = _names(provider, "only")
    models = _names(payload, "models", "models")
    return Override(
        order=tuple(_names(provider, "order") or ()),
        only=None if only is None else frozenset(only),
        ignore=frozenset(_names(provider, "ignore") or ()),
        allow_fallbacks=allow,
        sort=sort,
        max_price=_max_price(provider.get("max_price")),
        data_collection=collection,
        models=None if models is None else tuple(models),
    )


def _names(obj: Mapping[str, Any], key: str, param: str | None = None) -> list[str] | None:
    value = obj.get(key)
    if value is None:
        return None
    param = param or f"provider.{key}"
    if not isinstance(value, list):
        raise _bad(param, "an array of names")
    if len(value) > MAX_NAMES:
        raise InvalidRequest(
            f"'{param}' lists {len(value)} names; at most {MAX_NAMES} are allowed.", param=param, code="invalid_value"
        )
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS for v in value):
        raise _bad(param, f"an array of names of at most {MAX_NAME_CHARS} characters")
    return value


def _max_price(value: Any) -> MaxPrice | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("provider.max_price", "an object")
    limits: dict[str, float] = {}
    for key, raw in value.items():
        if key not in ("prompt", "completion", "request"):
            raise InvalidRequest(
                f"Unsupported field 'provider.max_price.{key}'.",
                param=f"provider.max_price.{key}",
                code="invalid_value",
            )
        limit = _number(raw) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else None
        if limit is None or limit < 0:
            raise _bad(f"provider.max_price.{key}", "a non-negative number")
        limits[key] = limit
    return MaxPrice(**limits)


def _number(raw: float | str) -> float | None:
    """A number, or one written as a string as OpenRouter's SDKs send prices."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _bad(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': expected {expected}.", param=param, code="invalid_value")


def narrow(cons: Constraints, override: Override, backends: Mapping[str, BackendInfo]) -> Constraints:
    """The tenant's constraints narrowed by the request; 403 if the request asks for more."""
    classes = cons.classes
    if override.data_collection == "allow" and "volunteer" not in classes:
        raise _widen("provider.data_collection", "this key may not use volunteer nodes")
    if override.data_collection == "deny":
        classes = classes - {"volunteer"}
    for key, names in (("provider.order", override.order), ("provider.only", override.only or ())):
        for name in names:
            info = backends.get(name)
            if info is None or not _usable(info, cons):
                raise _widen(key, f"backend {name!r} is not available to this key")
    only = override.only
    if override.order and not override.allow_fallbacks:
        only = frozenset(override.order) if only is None else only & frozenset(override.order)
    if cons.only is not None and only is not None:
        only = only & cons.only
    return replace(
        cons,
        classes=classes,
        only=only if only is not None else cons.only,
        ignore=cons.ignore | override.ignore,
        max_price=_lower(cons.max_price, override.max_price),
    )


def _usable(info: BackendInfo, cons: Constraints) -> bool:
    return (
        info.backend_class in cons.classes
        and (cons.zones is None or info.zone in cons.zones)
        and (cons.only is None or info.name in cons.only)
        and info.name not in cons.ignore
    )


def _lower(tenant: MaxPrice | None, asked: MaxPrice | None) -> MaxPrice | None:
    """The request's price ceiling, which may only be lower than the tenant's."""
    if asked is None:
        return tenant
    if tenant is None:
        return asked
    limits: dict[str, float | None] = {}
    for key in ("prompt", "completion", "request"):
        mine, theirs = getattr(tenant, key), getattr(asked, key)
        if theirs is not None and mine is not None and theirs > mine:
            raise _widen(f"provider.max_price.{key}", f"{theirs:g} is above this key's limit of {mine:g}")
        limits[key] = theirs if theirs is not None else mine
    return MaxPrice(**limits)


def _widen(param: str, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"'{param}' would widen this key's routing policy: {why}.", param=param, code="policy_violation"
    )


def strip(payload: dict[str, Any]) -> dict[str, Any]:
    """The body without the gateway's own routing fields, for the upstream."""
    return {k: v for k, v in payload.items() if k not in FIELDS}
