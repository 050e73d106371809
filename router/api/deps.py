"""FastAPI dependencies: the gateway built by create_app, and the admin guard."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from router.errors import AuthenticationFailed, PermissionDenied
from router.pipeline.gateway import Gateway
from router.settings import Settings
from router.tenancy.keys import KeyStore


async def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def _keys(request: Request) -> KeyStore:
    return request.app.state.keys


GatewayDep = Annotated[Gateway, Depends(_gateway)]
KeysDep = Annotated[KeyStore, Depends(_keys)]


async def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_key is None:
        raise PermissionDenied("The admin API is disabled: set FEDROUTER_ADMIN_KEY to enable it.")
    scheme, _, key = (request.headers.get("authorization") or "").partition(" ")
    # Both sides stripped (Settings strips the key), compared in constant time. Settings also
    # refuses an empty or short key, which once matched an empty bearer.
    expected = settings.admin_key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected):
        raise AuthenticationFailed("This route needs the admin key as 'Authorization: Bearer ADMIN_KEY'.")


AdminDep = Depends(require_admin)
