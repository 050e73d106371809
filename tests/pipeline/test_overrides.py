"""Per-request routing fields (OpenRouter's ``provider`` and ``models``) and fallback models: a
request may narrow its tenant's policy and never widen it; the fields never reach a backend. Also
the admin dry-run ranking."""

from __future__ import annotations

import httpx
import pytest

from router.config import ConfigError, parse_config
from tests.conftest import backend_entry

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def fed(start_sim_backend, start_gateway):
    sims = {
        "a": start_sim_backend("a"),
        "b": start_sim_backend("b"),
        "v": start_sim_backend("v", models=["m1", "m-vol"]),
        "s": start_sim_backend("s", models=["m1", "m2"]),
    }
    gw = start_gateway(
        [
            backend_entry(sims["a"], price={"input": 0.5, "output": 1.0}),
            backend_entry(sims["b"], price={"input": 5.0, "output": 20.0}),
            backend_entry(sims["v"], "volunteer", models=["m1", "m-vol"], price={"input": 0.0, "output": 0.0}),
            backend_entry(sims["s"], "sovereign", models=["m1", "m2"], price={"input": 0.8, "output": 1.5}),
        ],
        tenants=[
            {"name": "acme", "allow_volunteer": True, "policy": {"max_price": {"completion": 25}}},
            {"name": "other", "policy": "cheapest", "fallback_models": {"m-vol": ["m2"]}},
        ],
        routing={"exploration": 0.0, "eject_after_failures": 10},
    )
    gw.sims = sims
    return gw


def _post(gw, tenant="acme", **body):
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(tenant),
        timeout=10,
        json={"model": "m1", "messages": MSG, "max_tokens": 4, **body},
    )


def _served(gw, tenant="acme", **body):
    r = _post(gw, tenant, **body)
    assert r.status_code == 200, r.text
    return r.headers["x-fedrouter-backend"]


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ({"only": ["b"]}, "b"),
        ({"order": ["b", "a"]}, "b"),
        ({"sort": "price"}, "v"),  # the free volunteer
        ({"sort": "price", "data_collection": "deny"}, "a"),  # deny keeps it off volunteers
        ({"sort": "price", "ignore": ["v", "a"]}, "s"),
        ({"sort": "price", "max_price": {"completion": "1.2"}, "ignore": ["v"]}, "a"),  # strings, as OpenRouter's
        ({"only": ["a", "b"], "sort": "price"}, "a"),
    ],
)
def test_narrowing_overrides_route_as_asked(fed, provider, expected):
    assert _served(fed, provider=provider) == expected
    body = fed.sims[expected].last_request()["body"]
    assert "provider" not in body and "models" not in body  # consumed by the gateway
    assert body["model"] == "m1"


def test_max_price_below_every_backend_leaves_nothing(fed):
    r = _post(fed, provider={"max_price": {"completion": 0.5}, "ignore": ["v"]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "a: completion price 1 > max_price.completion" in r.json()["error"]["message"]


def test_allow_fallbacks_false_stays_on_the_ordered_backends(fed):
    fed.sims["b"].set(fail_status=503, fail_count=4)
    r = _post(fed, provider={"order": ["b"], "allow_fallbacks": False})
    assert r.status_code == 503
    assert {fed.sims[n].stats()["requests"] for n in "avs"} == {0}
    assert _served(fed, provider={"order": ["b"]}) != "b"  # fallbacks allowed: another one answers


@pytest.mark.parametrize(
    ("tenant", "provider", "param"),
    [
        ("other", {"only": ["v"]}, "provider.only"),  # a volunteer, for a tenant without volunteers
        ("other", {"order": ["no-such-backend"]}, "provider.order"),
        ("other", {"data_collection": "allow"}, "provider.data_collection"),
        ("acme", {"max_price": {"completion": 50}}, "provider.max_price.completion"),
    ],
)
def test_widening_overrides_are_refused(fed, tenant, provider, param):
    r = _post(fed, tenant, provider=provider)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]
    assert err["type"] == "invalid_request_error" and err["code"] == "policy_violation"
    assert r.headers["x-should-retry"] == "false"
    assert sum(s.stats()["requests"] for s in fed.sims.values()) == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"provider": {"sort": "speed"}}, "provider.sort"),
        ({"provider": {"quantizations": ["int4"]}}, "provider.quantizations"),
        ({"provider": "a"}, "provider"),
        ({"models": "m2"}, "models"),
        ({"provider": {"max_price": {"completion": -1}}}, "provider.max_price.completion"),
        ({"models": ["m2"] * 9}, "models"),
        ({"provider": {"order": ["a"] * 9}}, "provider.order"),
        ({"provider": {"only": ["a"] * 9}}, "provider.only"),
        ({"provider": {"ignore": ["v"] * 9}}, "provider.ignore"),
        ({"models": ["m" * 257]}, "models"),
    ],
)
def test_malformed_overrides_are_400(fed, body, param):
    r = _post(fed, **body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_a_huge_models_list_is_refused_at_once(fed):
    """A 9 MB list once held the loop for 6 s: refused as soon as it is counted, naming the cap,
    while other requests are served and nothing reaches a backend."""
    models = [f"model-{i:07d}" for i in range(400_000)]  # about 6 MB of JSON
    r = _post(fed, "other", model="no-such-model", models=models)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "models" and "at most 8" in err["message"]
    assert r.headers["x-should-retry"] == "false"
    assert sum(s.stats()["requests"] for s in fed.sims.values()) == 0
    assert _post(fed, "other", model="no-such-model", models=["m-vol", "m2"] + ["m2"] * 6).status_code == 200


def test_request_models_fall_back_in_order(fed):
    r = _post(fed, "other", model="no-such-model", models=["m-vol", "m2"])
    assert r.status_code == 200, r.text
    assert r.headers["x-fedrouter-backend"] == "s"
    body = fed.sims["s"].last_request()["body"]
    assert body["model"] == "m2" and "models" not in body
    rows = fed.usage("other")["recent"]
    assert [row["model"] for row in rows] == ["m2"]


def test_configured_fallback_models(fed):
    assert _served(fed, "acme", model="m-vol") == "v"  # acme may use the volunteer that serves it
    r = _post(fed, "other", model="m-vol")  # other may not: its fallback list takes over
    assert r.status_code == 200 and r.headers["x-fedrouter-backend"] == "s"
    assert fed.sims["s"].last_request()["body"]["model"] == "m2"
    assert _post(fed, "other", model="m-vol", models=[]).status_code == 404  # the request's list wins


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"fallback_models": {"m": ["n"], "n": ["m"]}}, "fallback_models: fallback cycle m -> n -> m"),
        ({"fallback_models": {"m": ["m"]}}, "fallback cycle m -> m"),
        ({"fallback_models": {"m": ["ghost"]}}, "fallback_models[m]: unknown model 'ghost'"),
        (
            {"tenants": [{"name": "t", "fallback_models": {"n": ["m"]}}], "fallback_models": {"m": ["n"]}},
            "tenants[t].fallback_models: fallback cycle",
        ),
    ],
)
def test_bad_fallback_configs(extra, message):
    raw = {
        "backends": [
            {
                "name": "b",
                "class": "sovereign",
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "models": ["m", "n"],
            }
        ],
        **extra,
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "f.yaml")
    assert message in str(exc.value)


def test_route_dry_run_explains_without_calling_backends(fed):
    r = httpx.get(
        fed.url + "/admin/v1/route", params={"model": "m-vol", "tenant": "other"}, headers=fed.admin(), timeout=10
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert [m["model"] for m in data["models"]] == ["m-vol", "m2"]
    assert data["models"][0]["candidates"] == []
    assert data["models"][0]["filtered"] == [{"backend": "v", "reason": "class volunteer not allowed"}]
    best = data["models"][1]["candidates"][0]
    assert best["backend"] == "s" and set(best["parts"]) == {"price", "latency"}
    assert best["estimate"]["energy_source"] == "declared" and best["estimate"]["carbon_g"] > 0
    r = httpx.get(
        fed.url + "/admin/v1/route",
        params={"model": "m1", "tenant": "acme", "needs": "tools"},
        headers=fed.admin(),
        timeout=10,
    )
    assert {c["backend"] for c in r.json()["models"][0]["candidates"]} == {"a", "b", "v", "s"}
    assert sum(s.stats()["requests"] for s in fed.sims.values()) == 0
    assert (
        httpx.get(
            fed.url + "/admin/v1/route", params={"model": "m1", "tenant": "acme"}, headers=fed.auth(), timeout=10
        ).status_code
        == 401
    )
    assert (
        httpx.get(
            fed.url + "/admin/v1/route", params={"model": "m1", "tenant": "nobody"}, headers=fed.admin(), timeout=10
        ).status_code
        == 400
    )


def test_capabilities_and_context_length_are_hard_constraints(start_sim_backend, start_gateway):
    small = start_sim_backend("small")
    tools = start_sim_backend("tools")
    gw = start_gateway(
        [
            backend_entry(small, context_length=300, capabilities=["json_mode"], price={"input": 0.1, "output": 0.1}),
            backend_entry(tools, capabilities=["tools", "json_mode"], price={"input": 9.0, "output": 9.0}),
        ],
        routing={"exploration": 0.0},
    )
    assert _served(gw) == "small"  # cheaper
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    assert _served(gw, tools=[tool]) == "tools"
    assert _served(gw, max_tokens=400) == "tools"  # beyond small's context length
    assert _served(gw, response_format={"type": "json_object"}) == "small"
