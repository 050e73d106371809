"""From an API key to its tenant (the only way into the /v1 routes), and the tenants themselves.

Tenants are declared in the config file or created through the admin API; both are kept in the
key store's SQLite file. The config file wins for the tenants it declares: they are written to
the database at every start, replacing what was stored, and the API cannot change or delete
them. A tenant created through the API lives in the database only; if the config later declares
the same name, the config's version replaces it at the next start. Another gateway process
sharing the database sees tenants created or changed through the API after at most
``key_cache_s`` seconds (it re-reads the table when its copy is older, or on an unknown tenant).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from policies.base import PolicySpec
from router.config import Budget, FederationConfig, RateLimits, TenantConfig
from router.errors import AuthenticationFailed, InvalidRequest
from router.tenancy.keys import KeyRecord, KeyStore

Source = Literal["config", "api"]
_UNLIMITED = RateLimits()  # frozen
_MAX_CALLERS = 4096


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as routing sees it: its policy, and whether volunteers may serve it."""

    name: str
    policy: PolicySpec
    allow_volunteer: bool
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class TenantEntry:
    config: TenantConfig
    source: Source
    tenant: Tenant


@dataclass(frozen=True, slots=True)
class Caller(Tenant):
    """A tenant as one of its keys sees it: routed as the tenant, limited by both."""

    key: KeyRecord | None = None
    limits: RateLimits = _UNLIMITED
    budgets: tuple[Budget, ...] = ()

    def may_use(self, model: str) -> bool:
        return self.key is None or self.key.models is None or model in self.key.models


def _entry(config: TenantConfig, source: Source) -> TenantEntry:
    return TenantEntry(config, source, Tenant(config.name, config.policy_spec(), config.allow_volunteer))


def _spec(config: TenantConfig) -> str:
    return config.model_dump_json(exclude_defaults=True)


def per_process_limits(tenants: Iterable[TenantConfig], keys: Iterable[KeyRecord] = ()) -> list[str]:
    """What several gateway processes without shared state would each enforce on their own,
    allowing the whole amount once per process: tenants' rate limits and budgets, and the
    limits of keys still in use."""
    found = []
    for t in tenants:
        kinds = [kind for kind, on in (("rate limits", t.limits != _UNLIMITED), ("budgets", bool(t.budgets))) if on]
        if kinds:
            found.append(f"tenant {t.name} ({' and '.join(kinds)})")
    now = time.time()
    found += [
        f"key {k.key_id} of tenant {k.tenant} (rate limits)"
        for k in keys
        if k.limits is not None and k.limits != _UNLIMITED and k.status(now) != "revoked"
    ]
    return found


def shared_state_required() -> InvalidRequest:
    return InvalidRequest(
        "Rate limits and budgets need shared state when several gateway processes serve (--workers N): each "
        "process would allow the whole amount. Restart the gateway with --state redis://HOST:PORT/DB.",
        code="shared_state_required",
    )


def check_key_limits(tenant: RateLimits, key: RateLimits | None) -> None:
    """A key's limits may narrow its tenant's, never widen them."""
    if key is None:
        return
    for field, value in key.model_dump(exclude_none=True).items():
        ceiling = getattr(tenant, field)
        if ceiling is not None and value > ceiling:
            raise InvalidRequest(
                f"limits.{field} = {value} is above the tenant's limit of {ceiling}; a key's "
                "limits may only be lower than its tenant's.",
                param=f"limits.{field}",
                code="limit_exceeds_tenant",
            )


class Tenancy:
    def __init__(
        self, config: FederationConfig, keys: KeyStore, refresh_s: float = 10.0, limits_per_process: bool = False
    ) -> None:
        """``limits_per_process``: this is one of several processes without shared state, where
        limits and budgets could not hold; the API then refuses to set any."""
        self.limits_per_process = limits_per_process
        self._declared = {t.name: t for t in config.tenants}
        self._entries = {t.name: _entry(t, "config") for t in config.tenants}
        self._specs: dict[str, str] = {}
        self._keys = keys
        self._refresh_s = refresh_s
        self._fresh_until = 0.0
        # The caller of each key as last authenticated, while its key record and tenant entry are
        # the same objects: most requests come from a key seen a moment ago.
        self._callers: dict[str, tuple[KeyRecord, TenantEntry, Caller]] = {}

    async def start(self) -> None:
        """Write the config's tenants to the database, then read every tenant from it."""
        await self._keys.run(self._keys.sync_config, {n: _spec(t) for n, t in self._declared.items()})
        await self._reload()

    async def _reload(self) -> None:
        rows = await self._keys.run(self._keys.tenants)
        entries: dict[str, TenantEntry] = {}
        specs: dict[str, str] = {}
        for name, spec, source in rows:
            specs[name] = spec
            if source == "config" and name in self._declared:
                entries[name] = self._entries.get(name) or _entry(self._declared[name], "config")
            elif source == "api":
                # Unchanged tenants keep their objects: the planner caches per policy object.
                same = self._specs.get(name) == spec and name in self._entries
                entries[name] = self._entries[name] if same else _entry(TenantConfig.model_validate_json(spec), "api")
        for name, config in self._declared.items():
            entries.setdefault(name, _entry(config, "config"))  # a database still being seeded
        self._entries, self._specs = entries, specs
        self._fresh_until = time.monotonic() + self._refresh_s

    def tenant(self, name: str) -> Tenant | None:
        entry = self._entries.get(name)
        return entry.tenant if entry else None

    def entry(self, name: str) -> TenantEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[TenantEntry]:
        return [self._entries[n] for n in self.names()]

    @staticmethod
    def may_use(tenant: Tenant, model: str) -> bool:
        """Whether the caller's key may use the model (a tenant without a key: every model)."""
        return not isinstance(tenant, Caller) or tenant.may_use(model)

    async def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise AuthenticationFailed("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationFailed("The Authorization header must be 'Bearer YOUR_KEY'.")
        if time.monotonic() >= self._fresh_until:
            self._fresh_until = time.monotonic() + self._refresh_s  # one request re-reads; others go on
            await self._reload()
        record = await self._keys.lookup(key)
        entry = self._entries.get(record.tenant) if record else None
        if record is not None and entry is None:
            await self._reload()  # created by another process since we last looked
            entry = self._entries.get(record.tenant)
        if record is None or entry is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {_redact(key)}.")
        seen = self._callers.get(record.key_id)
        if seen is not None and seen[0] is record and seen[1] is entry:
            return seen[2]
        t = entry.tenant
        caller = Caller(
            t.name, t.policy, t.allow_volunteer, record.key_id, record, entry.config.limits, tuple(entry.config.budgets)
        )
        if len(self._callers) >= _MAX_CALLERS:
            self._callers.clear()
        self._callers[record.key_id] = (record, entry, caller)
        return caller

    # -- administration ----------------------------------------------------------------------

    def check_limits_hold(self, tenant: TenantConfig | None = None, key: RateLimits | None = None) -> None:
        """Refuse limits or budgets this process alone would enforce (see ``limits_per_process``)."""
        if self.limits_per_process and (
            (tenant is not None and per_process_limits([tenant])) or (key is not None and key != _UNLIMITED)
        ):
            raise shared_state_required()

    async def create(self, config: TenantConfig) -> TenantEntry:
        self.check_limits_hold(config)
        await self._reload()
        if config.name in self._entries or not await self._keys.run(self._keys.add_tenant, config.name, _spec(config)):
            raise InvalidRequest(f"A tenant named {config.name!r} exists already.", param="name", code="tenant_exists")
        await self._reload()
        return self._entries[config.name]

    async def update(self, config: TenantConfig) -> TenantEntry:
        self._writable(config.name)
        self.check_limits_hold(config)
        await self._keys.run(self._keys.put_tenant, config.name, _spec(config), "api")
        await self._reload()
        return self._entries[config.name]

    async def delete(self, name: str) -> None:
        self._writable(name)
        await self._keys.run(self._keys.delete_tenant, name)
        await self._reload()

    def _writable(self, name: str) -> TenantEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise unknown_tenant(name)
        if entry.source == "config":
            raise InvalidRequest(
                f"Tenant {name!r} is declared in the config file; change it there and restart.", code="tenant_in_config"
            )
        return entry


def unknown_tenant(name: str, param: str | None = None) -> InvalidRequest:
    err = InvalidRequest(f"Unknown tenant {name!r}.", param=param, code="unknown_tenant")
    if param is None:
        err.status, err.code = 404, "tenant_not_found"
    return err


def _redact(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 10 else "*" * len(key)


__all__ = [
    "Caller",
    "Tenancy",
    "TenantEntry",
    "check_key_limits",
    "per_process_limits",
    "shared_state_required",
    "unknown_tenant",
]
