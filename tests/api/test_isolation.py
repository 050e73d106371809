"""Every route of the app, called with one tenant's key, reads, exports and changes nothing of another's.

The routes are enumerated from the app itself, so a route added later is covered without
touching this file: admin routes must refuse a tenant key (401), and no answer of any route may
carry another tenant's name, key ids or request ids, nor change what that tenant has.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from router.settings import Settings
from tests.conftest import backend_entry
from tests.servers import ADMIN_KEY

MINE, THEIRS = "tenant-a", "zz-tenant-b"


def _routes(routes: Iterable[Any]) -> list[tuple[str, str]]:
    """(method, path) of every route, looking inside included routers (FastAPI >= 0.16x keeps them nested)."""
    out = []
    for route in routes:
        contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        for ctx in contexts:
            methods = getattr(ctx, "methods", None) or getattr(getattr(ctx, "original_route", None), "methods", None)
            assert methods, f"a route this test does not know how to call: {ctx!r}; teach it, don't skip it"
            out += [(m, ctx.path) for m in sorted(methods) if m not in ("HEAD", "OPTIONS")]
    return sorted(set(out))


def _is_admin(path: str) -> bool:
    return path.startswith("/admin/v1/") or path == "/metrics"


@pytest.fixture
def world(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1")
    gw = start_gateway(
        [backend_entry(sim)],
        [
            {"name": MINE, "budgets": [{"metric": "usd", "period": "monthly", "hard": 10.0}]},
            {
                "name": THEIRS,
                "limits": {"requests_per_minute": 1000},
                "budgets": [{"metric": "usd", "period": "monthly", "hard": 20.0}],
            },
        ],
    )
    request_ids = []
    for stream in (False, True):
        resp = httpx.post(
            gw.url + "/v1/chat/completions",
            headers=gw.auth(THEIRS),
            timeout=10,
            json={
                "model": "m1",
                "messages": [{"role": "user", "content": "secret"}],
                "max_tokens": 3,
                "stream": stream,
            },
        )
        assert resp.status_code == 200
        request_ids.append(resp.headers["x-request-id"])
    extra = httpx.post(gw.url + "/admin/v1/keys", headers=gw.admin(), json={"tenant": THEIRS, "name": "theirs"})
    assert extra.status_code == 200
    return gw, request_ids, extra.json()["id"]


def _snapshot(gw) -> dict[str, Any]:
    """Everything of the other tenant the operator can see."""
    get = lambda path, **params: httpx.get(gw.url + path, params=params, headers=gw.admin(), timeout=10).json()  # noqa: E731
    usage = get("/admin/v1/usage", tenant=THEIRS, limit=1000)
    return {
        "tenant": get(f"/admin/v1/tenants/{THEIRS}"),
        "keys": get("/admin/v1/keys", tenant=THEIRS),
        "requests": sorted(r["request_id"] for r in usage["recent"]),
        "totals": usage["totals"],
    }


def test_every_route_keeps_tenants_apart(world):
    gw, their_requests, their_key_id = world
    before = _snapshot(gw)
    their_key_ids = [k["id"] for k in before["keys"]["data"]]
    secrets = {THEIRS, gw.keys[THEIRS], *their_key_ids, *their_requests}
    today = datetime.now(UTC).date()
    params = {
        "tenant": THEIRS,
        "key_id": their_key_id,
        "limit": "1000",
        "model": "m1",
        "from": (today - timedelta(days=1)).isoformat(),
        "to": (today + timedelta(days=1)).isoformat(),
    }
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt": "hi",
        "input": "hi",
        "max_tokens": 2,
        "tenant": THEIRS,
        "name": THEIRS,
        "grace_seconds": 0,
        "limits": {"requests_per_minute": 1_000_000},
    }
    fill = {"name": THEIRS, "tenant": THEIRS, "key_id": their_key_id, "model": "m1"}

    routes = _routes(gw.app.routes)
    assert ("POST", "/v1/chat/completions") in routes and ("DELETE", "/admin/v1/keys/{key_id}") in routes
    for method, path in routes:
        url = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: fill.get(m.group(1), THEIRS), path)
        resp = httpx.request(
            method,
            gw.url + url,
            headers=gw.auth(MINE),
            params=params,
            json=body if method in ("POST", "PATCH", "PUT") else None,
            timeout=10,
        )
        where = f"{method} {path} -> {resp.status_code}"
        if _is_admin(path):
            assert resp.status_code == 401, where  # a tenant key is no admin key
            assert resp.json()["error"]["code"] == "invalid_api_key", where
        seen = resp.text + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
        leaked = sorted(s for s in secrets if s in seen)
        assert not leaked, f"{where} shows the other tenant's {leaked}"

    assert _snapshot(gw) == before  # nothing of theirs changed: config, keys, usage
    still = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(THEIRS),
        timeout=10,
        json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    )
    assert still.status_code == 200  # their key still works


def test_a_tenant_key_cannot_act_as_admin_even_with_the_admin_key_as_a_tenant_name(world):
    gw, _, their_key_id = world
    for method, path, json in (
        ("POST", "/admin/v1/keys", {"tenant": MINE}),
        ("PATCH", f"/admin/v1/tenants/{MINE}", {"limits": {"requests_per_minute": 10**9}}),
        ("DELETE", f"/admin/v1/keys/{their_key_id}", None),
        ("POST", f"/admin/v1/keys/{their_key_id}/rotate", None),
    ):
        resp = httpx.request(method, gw.url + path, headers=gw.auth(MINE), json=json, timeout=10)
        assert resp.status_code == 401, (method, path)


def _raw_status(url: str, method: str, path: str, authorization: str) -> int:
    """The status of one request sent as written, blanks and all (httpx refuses a header value
    that ends in a blank, which is the attack)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: {authorization}\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"{head}content-length: 0\r\nconnection: close\r\n\r\n".encode())
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("bearer", ["", " ", "Bearer", "Bearer ", "Bearer  ", "bearer x", f"Bearer {ADMIN_KEY[:-1]}"])
def test_admin_routes_refuse_an_empty_or_wrong_bearer(world, bearer):
    """An empty admin key once matched an empty bearer; now neither side may be empty."""
    gw, _, _ = world
    for method, path in (("GET", "/admin/v1/usage"), ("GET", "/metrics"), ("POST", "/admin/v1/keys")):
        assert _raw_status(gw.url, method, path, bearer) == 401, (bearer, path)
    assert _raw_status(gw.url, "GET", "/admin/v1/usage", f"Bearer {ADMIN_KEY}") == 200


def test_the_admin_key_is_compared_stripped_on_both_sides(start_sim_backend, start_gateway):
    """A key read with a stray newline (an env file) and a bearer with trailing blanks are the same key."""
    sim = start_sim_backend("dc1")
    settings = {"admin_key": f"  {ADMIN_KEY}\n"}
    with start_gateway([backend_entry(sim)], [{"name": MINE}], settings=settings, keys=()) as gw:
        base = gw.url
        assert _raw_status(base, "GET", "/admin/v1/usage", f"Bearer {ADMIN_KEY}") == 200
        assert _raw_status(base, "GET", "/admin/v1/usage", f"Bearer  {ADMIN_KEY} ") == 200
        assert _raw_status(base, "GET", "/admin/v1/usage", f"Bearer {ADMIN_KEY}x") == 401
        assert _raw_status(base, "GET", "/admin/v1/usage", "Bearer ") == 401


@pytest.mark.parametrize(("key", "fragment"), [("", "set but empty"), ("  \t ", "set but empty"), ("x" * 15, "15")])
def test_an_empty_or_short_admin_key_is_refused(key, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Settings(admin_key=key)
    assert Settings(admin_key=None).admin_key is None
    assert Settings(admin_key=" " + "k" * 16 + " ").admin_key.get_secret_value() == "k" * 16
