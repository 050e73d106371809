"""From an API key to a tenant: the only way into the /v1 routes."""

from __future__ import annotations

from router.config import FederationConfig
from router.errors import AuthenticationFailed
from router.keys import KeyStore
from router.routing import Tenant


class Tenancy:
    def __init__(self, config: FederationConfig, keys: KeyStore) -> None:
        self._tenants = {
            t.name: Tenant(t.name, t.policy_spec(), t.allow_volunteer) for t in config.tenants
        }
        self._keys = keys

    def tenant(self, name: str) -> Tenant | None:
        return self._tenants.get(name)

    def names(self) -> list[str]:
        return list(self._tenants)

    async def authenticate(self, authorization: str | None) -> Tenant:
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationFailed("The Authorization header must be 'Bearer YOUR_KEY'.")
        record = await self._keys.lookup(key)
        tenant = self._tenants.get(record.tenant) if record else None
        if record is None or tenant is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {_redact(key)}.")
        return Tenant(tenant.name, tenant.policy, tenant.allow_volunteer, record.key_id)


def _redact(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 10 else "*" * len(key)
