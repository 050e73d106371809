"""The model catalogue: /v1/models in OpenAI's shape, with what a client choosing a model at run
time reads (context, price as this tenant pays it, parameters, classes, zones, energy, carbon)."""

from __future__ import annotations

import httpx
import openai
import pytest

from router.carbon import CarbonTable
from router.tenancy.keys import KeyStore
from tests.conftest import backend_entry
from tests.openai_schema import validate

TENANTS = [
    {"name": "acme", "allow_volunteer": True},
    {"name": "other"},  # no volunteers
    {"name": "thrifty", "allow_volunteer": True, "policy": {"max_price": {"prompt": 0.5}}},
    {"name": "french", "allow_volunteer": True, "policy": {"zones": ["FR"]}},
]


@pytest.fixture
def gw(start_sim_backend, start_gateway):
    dc, vol, sov = (start_sim_backend(n) for n in ("dc1", "vol1", "sov1"))
    backends = [
        backend_entry(dc, zone="FR", context_length=8192, capabilities=["tools", "json_mode"]),
        backend_entry(
            vol,
            "volunteer",
            models=["m1", "v1"],
            zone="DE",
            context_length=4096,
            price={"input": 0.1, "output": 0.3},
            energy={"joules_per_token": 2.0},
        ),
        backend_entry(sov, "sovereign", models=["embed-1"], zone="FR", capabilities=["embeddings"]),
    ]
    return start_gateway(backends, TENANTS)


def _models(gw, tenant: str) -> dict[str, dict]:
    r = httpx.get(gw.url + "/v1/models", headers=gw.auth(tenant), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "ListModelsResponse")
    return {m["id"]: m for m in body["data"]}


def test_the_openai_sdk_still_lists_and_retrieves(gw):
    assert sorted(m.id for m in gw.client("acme").models.list().data) == ["embed-1", "m1", "v1"]
    assert sorted(m.id for m in gw.client("other").models.list().data) == ["embed-1", "m1"]
    model = gw.client("other").models.retrieve("m1")
    assert (model.id, model.object, model.owned_by) == ("m1", "model", "fedrouter:datacenter")


def test_a_tenant_without_volunteers_sees_no_volunteer_only_model(gw):
    assert "v1" not in _models(gw, "other")
    with pytest.raises(openai.NotFoundError):
        gw.client("other").models.retrieve("v1")
    v1 = _models(gw, "acme")["v1"]
    assert v1["classes"] == ["volunteer"] and v1["zones"] == ["DE"]


def test_classes_zones_and_prices_are_those_the_tenant_may_use(gw):
    other, acme, thrifty = (_models(gw, t)["m1"] for t in ("other", "acme", "thrifty"))
    # Without volunteers: the datacenter backend alone, at its price (1 and 2 USD per 1M tokens).
    assert other["classes"] == ["datacenter"] and other["zones"] == ["FR"]
    assert other["pricing"] == {"prompt": "0.000001", "completion": "0.000002"}
    assert [e["backend"] for e in other["endpoints"]] == ["dc1"]
    # With volunteers: both, and the most it may pay per token.
    assert acme["classes"] == ["datacenter", "volunteer"] and acme["zones"] == ["DE", "FR"]
    assert acme["pricing"] == {"prompt": "0.000001", "completion": "0.000002"}
    assert {e["backend"]: e["pricing"]["completion"] for e in acme["endpoints"]} == {
        "dc1": "0.000002",
        "vol1": "0.0000003",
    }
    # A price ceiling of 0.5 USD per 1M prompt tokens leaves the volunteer, and its price.
    assert thrifty["classes"] == ["volunteer"]
    assert thrifty["pricing"] == {"prompt": "0.0000001", "completion": "0.0000003"}
    assert (other["context_length"], acme["context_length"], thrifty["context_length"]) == (8192, 8192, 4096)


def test_zones_are_those_of_the_tenant_policy(gw):
    models = _models(gw, "french")  # volunteers allowed, but only in FR: the volunteer is in DE
    assert sorted(models) == ["embed-1", "m1"]
    assert (models["m1"]["classes"], models["m1"]["zones"]) == (["datacenter"], ["FR"])
    assert (models["embed-1"]["classes"], models["embed-1"]["zones"]) == (["sovereign"], ["FR"])


def test_energy_and_carbon_per_1k_tokens(gw):
    m1 = _models(gw, "other")["m1"]
    wh = 0.5 * 1000 / 3600  # 0.5 J per token, declared
    assert m1["energy_per_1k_tokens"]["completion_wh"] == pytest.approx(wh, rel=1e-5)
    fr = CarbonTable(None).intensity("FR")
    assert m1["carbon_per_1k_tokens"]["completion_g"] == pytest.approx(wh / 1000 * fr, rel=1e-5)
    assert m1["endpoints"][0]["energy_per_1k_tokens"]["source"] == "declared"
    acme = _models(gw, "acme")["m1"]  # the highest of its backends: the volunteer's 2 J per token
    assert acme["energy_per_1k_tokens"]["prompt_wh"] == pytest.approx(2.0 * 1000 / 3600, rel=1e-5)


def test_supported_parameters_follow_declared_capabilities(gw):
    models = _models(gw, "acme")
    assert models["embed-1"]["supported_parameters"] == ["dimensions", "encoding_format"]
    assert {"tools", "tool_choice", "response_format", "max_tokens"} <= set(models["m1"]["supported_parameters"])


def test_a_key_limited_to_some_models_sees_only_those(gw):
    store = KeyStore(gw.db_path)
    key = store.create("acme", models=["embed-1"])[0]
    store.close()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        assert [m.id for m in client.models.list().data] == ["embed-1"]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("m1")
    finally:
        client.close()
