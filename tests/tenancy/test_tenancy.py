"""Tenants and keys, administered over the admin API and the CLI, against a running gateway."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from router.cli import main
from tests.conftest import backend_entry
from tests.openai_schema import validate
from tests.servers import admin

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _config(sim, tenants=None):
    return {
        "backends": [backend_entry(sim, models=["m1", "m2"])],
        "tenants": tenants or [{"name": "acme", "limits": {"requests_per_minute": 100}}],
    }


def _key(url, **body):
    resp = httpx.post(url + "/admin/v1/keys", headers=admin(), json={"tenant": "acme", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _chat(url, key, **extra):
    return httpx.post(
        url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={**CHAT, **extra}, timeout=10
    )


def _error(resp, status, code):
    assert resp.status_code == status, resp.text
    validate(resp.json(), "ErrorResponse")
    assert resp.json()["error"]["code"] == code, resp.text
    return resp.json()["error"]


@pytest.fixture
def gateway(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1", models=["m1", "m2"])
    # A long key cache: revocation in this process must not wait for it.
    with start_gateway(**_config(sim), settings={"key_cache_s": 300}, keys=()) as gw:
        yield gw.url


def test_key_is_shown_once_listed_without_secret_and_revoked_at_once(gateway):
    created = _key(gateway, name="ci")
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("fr-") and created["status"] == "active" and created["name"] == "ci"
    assert _chat(gateway, secret).status_code == 200  # now cached as valid for 300 s

    listed = httpx.get(gateway + "/admin/v1/keys", params={"tenant": "acme"}, headers=admin())
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()["data"]] == [key_id]
    assert secret not in listed.text and "key_hash" not in listed.text and '"key"' not in listed.text
    assert secret not in httpx.get(gateway + f"/admin/v1/keys/{key_id}", headers=admin()).text

    revoked = httpx.delete(gateway + f"/admin/v1/keys/{key_id}", headers=admin())
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    _error(_chat(gateway, secret), 401, "invalid_api_key")  # despite the cache
    _error(httpx.delete(gateway + f"/admin/v1/keys/{key_id}", headers=admin()), 400, "key_revoked")
    _error(httpx.post(gateway + f"/admin/v1/keys/{key_id}/rotate", headers=admin()), 400, "key_revoked")
    _error(httpx.delete(gateway + "/admin/v1/keys/key_nope", headers=admin()), 404, "key_not_found")


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(gateway):
    old = _key(gateway, models=["m1"], limits={"requests_per_minute": 50})
    assert _chat(gateway, old["key"]).status_code == 200
    rotated = httpx.post(gateway + f"/admin/v1/keys/{old['id']}/rotate", headers=admin(), json={"grace_seconds": 1.0})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["id"] != old["id"] and new["key"] != old["key"]
    assert new["models"] == ["m1"] and new["limits"] == {"requests_per_minute": 50}  # settings carried over
    assert _chat(gateway, old["key"]).status_code == 200  # still in its grace period
    assert _chat(gateway, new["key"]).status_code == 200
    time.sleep(1.2)
    _error(_chat(gateway, old["key"]), 401, "invalid_api_key")
    assert _chat(gateway, new["key"]).status_code == 200

    again = httpx.post(gateway + f"/admin/v1/keys/{new['id']}/rotate", headers=admin())
    assert again.status_code == 200
    _error(_chat(gateway, new["key"]), 401, "invalid_api_key")  # no grace: revoked at once
    assert _chat(gateway, again.json()["key"]).status_code == 200


def test_expired_key_is_refused(gateway):
    key = _key(gateway, expires_at=time.time() + 1.0)
    assert _chat(gateway, key["key"]).status_code == 200
    time.sleep(1.2)
    _error(_chat(gateway, key["key"]), 401, "invalid_api_key")
    assert httpx.get(gateway + f"/admin/v1/keys/{key['id']}", headers=admin()).json()["status"] == "expired"
    err = _error(
        httpx.post(gateway + "/admin/v1/keys", headers=admin(), json={"tenant": "acme", "expires_at": time.time() - 5}),
        400,
        "invalid_value",
    )
    assert err["param"] == "expires_at"


def test_model_allow_list_hides_other_models(gateway):
    key = _key(gateway, models=["m1"])["key"]
    assert _chat(gateway, key).status_code == 200
    err = _error(_chat(gateway, key, model="m2"), 404, "model_not_found")
    assert "m2" in err["message"]
    client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0)
    try:
        assert [m.id for m in client.models.list().data] == ["m1"]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("m2")
    finally:
        client.close()
    everything = _key(gateway)["key"]
    assert _chat(gateway, everything, model="m2").status_code == 200
    _error(
        httpx.post(gateway + "/admin/v1/keys", headers=admin(), json={"tenant": "acme", "models": ["nope"]}),
        400,
        "model_not_found",
    )


def test_key_limits_never_exceed_the_tenant(gateway):
    before = httpx.get(gateway + "/admin/v1/keys", headers=admin()).json()["data"]
    err = _error(
        httpx.post(
            gateway + "/admin/v1/keys", headers=admin(), json={"tenant": "acme", "limits": {"requests_per_minute": 101}}
        ),
        400,
        "limit_exceeds_tenant",
    )
    assert err["param"] == "limits.requests_per_minute"
    for bad in ({"requests_per_minute": -1}, {"requests_per_minute": "5"}, {"tokens_per_minute": 1.5}):
        resp = httpx.post(gateway + "/admin/v1/keys", headers=admin(), json={"tenant": "acme", "limits": bad})
        assert resp.status_code == 400, bad
        validate(resp.json(), "ErrorResponse")
        assert next(iter(bad)) in resp.json()["error"]["param"]
    _error(httpx.post(gateway + "/admin/v1/keys", headers=admin(), json={"tenant": "ghost"}), 400, "unknown_tenant")
    assert httpx.get(gateway + "/admin/v1/keys", headers=admin()).json()["data"] == before  # nothing written
    ok = _key(gateway, limits={"requests_per_minute": 100, "tokens_per_minute": 10_000})
    assert ok["limits"] == {"requests_per_minute": 100, "tokens_per_minute": 10_000}


def test_tenants_created_changed_and_deleted_through_the_api(gateway):
    spec = {
        "name": "startup",
        "policy": "cheapest",
        "limits": {"requests_per_minute": 30},
        "budgets": [{"metric": "usd", "period": "monthly", "hard": 5.0, "soft": 4.0}],
    }
    resp = httpx.post(gateway + "/admin/v1/tenants", headers=admin(), json=spec)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "api" and body["limits"] == {"requests_per_minute": 30}
    assert body["budgets"][0] | {"since": None} == {
        "metric": "usd",
        "period": "monthly",
        "since": None,
        "hard": 5.0,
        "soft": 4.0,
        "spent": 0.0,
        "reserved": 0.0,
        "remaining": 5.0,
    }
    _error(httpx.post(gateway + "/admin/v1/tenants", headers=admin(), json=spec), 400, "tenant_exists")
    key = httpx.post(gateway + "/admin/v1/keys", headers=admin(), json={"tenant": "startup"}).json()["key"]
    assert _chat(gateway, key).status_code == 200

    patched = httpx.patch(
        gateway + "/admin/v1/tenants/startup", headers=admin(), json={"limits": {"requests_per_minute": 40}}
    )
    assert patched.status_code == 200 and patched.json()["limits"] == {"requests_per_minute": 40}
    assert patched.json()["budgets"][0]["hard"] == 5.0  # untouched fields stay
    _error(
        httpx.patch(gateway + "/admin/v1/tenants/acme", headers=admin(), json={"allow_volunteer": True}),
        400,
        "tenant_in_config",
    )
    _error(httpx.get(gateway + "/admin/v1/tenants/ghost", headers=admin()), 404, "tenant_not_found")

    assert httpx.delete(gateway + "/admin/v1/tenants/startup", headers=admin()).status_code == 200
    _error(_chat(gateway, key), 401, "invalid_api_key")
    names = [t["name"] for t in httpx.get(gateway + "/admin/v1/tenants", headers=admin()).json()["data"]]
    assert names == ["acme"]


def test_workers_without_shared_state_refuse_limits_and_budgets(start_sim_backend, start_gateway):
    """One of several processes without --state (FEDROUTER_WORKERS > 1): a limit or budget set
    through the API would hold in this process only, so the API refuses it and writes nothing."""
    sim = start_sim_backend("dc1", models=["m1", "m2"])
    with start_gateway(
        **_config(sim, [{"name": "acme"}]),
        settings={"workers": 2},
        keys=(),
    ) as gw:
        url = gw.url
        before = httpx.get(url + "/admin/v1/tenants", headers=admin()).json()
        for spec in (
            {"name": "newco", "limits": {"requests_per_minute": 30}},
            {"name": "newco", "budgets": [{"metric": "usd", "period": "daily", "hard": 1.0}]},
        ):
            err = _error(
                httpx.post(url + "/admin/v1/tenants", headers=admin(), json=spec), 400, "shared_state_required"
            )
            assert "--state redis://" in err["message"]
        assert httpx.get(url + "/admin/v1/tenants", headers=admin()).json() == before

        created = httpx.post(url + "/admin/v1/tenants", headers=admin(), json={"name": "newco", "policy": "cheapest"})
        assert created.status_code == 200, created.text
        _error(
            httpx.patch(url + "/admin/v1/tenants/newco", headers=admin(), json={"limits": {"concurrent_streams": 2}}),
            400,
            "shared_state_required",
        )
        assert httpx.get(url + "/admin/v1/tenants/newco", headers=admin()).json()["limits"] == {}
        keys = httpx.get(url + "/admin/v1/keys", headers=admin()).json()["data"]
        _error(
            httpx.post(
                url + "/admin/v1/keys", headers=admin(), json={"tenant": "newco", "limits": {"requests_per_minute": 5}}
            ),
            400,
            "shared_state_required",
        )
        assert httpx.get(url + "/admin/v1/keys", headers=admin()).json()["data"] == keys
        key = _key(url)["key"]  # a key without limits of its own is fine
        assert _chat(url, key).status_code == 200

    # The same, with shared state: allowed.
    with start_gateway(
        **_config(sim, [{"name": "acme"}]),
        settings={
            "workers": 2,
            "state": "redis://127.0.0.1:6379/0",
            "state_prefix": f"fedrouter-test:{time.time_ns()}:",
        },
        keys=(),
    ) as gw:
        url = gw.url
        resp = httpx.post(
            url + "/admin/v1/tenants", headers=admin(), json={"name": "newco", "limits": {"requests_per_minute": 30}}
        )
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("change", "param", "fragment"),
    [
        ({"budgets": [{"metric": "usd", "period": "daily", "hard": -1}]}, "budgets.0.hard", "greater than or equal"),
        ({"budgets": [{"metric": "usd", "period": "daily", "hard": "10"}]}, "budgets.0.hard", "valid number"),
        (
            {
                "budgets": [
                    {"metric": "usd", "period": "daily", "hard": 1},
                    {"metric": "usd", "period": "daily", "hard": 2},
                ]
            },
            "budgets",
            "overlapping budgets",
        ),
        ({"budgets": [{"metric": "usd", "period": "weekly", "hard": 1}]}, "budgets.0.period", "'daily'"),
        ({"budgets": [{"metric": "usd", "period": "daily", "hard": 1, "soft": 2}]}, "budgets.0", "above the hard"),
        ({"limits": {"tokens_per_minute": 0}}, "limits.tokens_per_minute", "greater than 0"),
        ({"limits": {"concurrent_streams": "many"}}, "limits.concurrent_streams", "valid integer"),
        ({"name": "bad name!"}, "name", "pattern"),
    ],
)
def test_bad_tenant_input_is_refused_and_nothing_is_written(gateway, change, param, fragment):
    before = httpx.get(gateway + "/admin/v1/tenants", headers=admin()).json()
    resp = httpx.post(gateway + "/admin/v1/tenants", headers=admin(), json={"name": "newco", **change})
    assert resp.status_code == 400, resp.text
    validate(resp.json(), "ErrorResponse")
    error = resp.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert httpx.get(gateway + "/admin/v1/tenants", headers=admin()).json() == before


def test_config_tenants_win_and_api_tenants_survive_restarts(start_sim_backend, start_gateway, tmp_path):
    sim = start_sim_backend("dc1", models=["m1", "m2"])
    ledger = f"sqlite:///{tmp_path / 'gw.db'}"
    with start_gateway(**_config(sim), settings={"ledger": ledger}, keys=()) as gw:
        url = gw.url
        assert httpx.post(url + "/admin/v1/tenants", headers=admin(), json={"name": "newco"}).status_code == 200
        key = httpx.post(url + "/admin/v1/keys", headers=admin(), json={"tenant": "newco"}).json()["key"]
    tenants = [{"name": "acme", "limits": {"requests_per_minute": 7}}]
    with start_gateway(**_config(sim, tenants), settings={"ledger": ledger}, keys=()) as gw:
        url = gw.url
        listed = {t["name"]: t for t in httpx.get(url + "/admin/v1/tenants", headers=admin()).json()["data"]}
        assert listed["acme"]["limits"] == {"requests_per_minute": 7} and listed["acme"]["source"] == "config"
        assert listed["newco"]["source"] == "api"
        assert _chat(url, key).status_code == 200
    with start_gateway(
        **_config(sim, [{"name": "newco", "limits": {"requests_per_minute": 3}}]), settings={"ledger": ledger}, keys=()
    ) as gw:
        url = gw.url
        listed = {t["name"]: t for t in httpx.get(url + "/admin/v1/tenants", headers=admin()).json()["data"]}
        assert set(listed) == {"newco"}  # acme left the config; newco is now the config's
        assert listed["newco"]["source"] == "config" and listed["newco"]["limits"] == {"requests_per_minute": 3}


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(start_sim_backend, tmp_path):
    sim = start_sim_backend("dc1")
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(f"""
backends:
  - name: dc1
    class: datacenter
    type: openai
    base_url: {sim.base_url}
    models: [m1]
tenants:
  - name: acme
    limits: {{requests_per_minute: 10}}
""")
    return str(cfg), f"sqlite:///{tmp_path / 'ledger.db'}"


def _cli(capsys, *args):
    """Run the command in this process (the subprocess path is tested in test_cli): (status, out, err)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.fixture
def ok(capsys):
    def run(*args):
        code, out, err = _cli(capsys, *args)
        assert code == 0, err
        return out

    return run


@pytest.fixture
def fails(capsys):
    def run(fragment, *args):
        code, out, err = _cli(capsys, *args)
        assert code == 2, out
        lines = err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], err
        return lines[0]

    return run


def test_cli_keys_and_tenants(cli_env, ok):
    cfg, ledger = cli_env
    out = ok(
        "keys",
        "create",
        "--tenant",
        "acme",
        "--config",
        cfg,
        "--ledger",
        ledger,
        "--name",
        "ci",
        "--model",
        "m1",
        "--rpm",
        "5",
        "--expires-in",
        "3600",
    )
    secret = out.strip().splitlines()[-1]
    key_id = out.split()[1]
    listed = ok("keys", "list", "--ledger", ledger)
    assert key_id in listed and "active" in listed and "requests_per_minute=5" in listed and "models m1" in listed
    assert secret not in listed

    rotated = ok("keys", "rotate", key_id, "--ledger", ledger)
    new_secret = rotated.strip().splitlines()[-1]
    assert new_secret.startswith("fr-") and new_secret != secret
    new_id = rotated.split()[3].rstrip(";")
    assert f"{key_id}  acme" in ok("keys", "list", "--ledger", ledger)
    ok("keys", "revoke", new_id, "--ledger", ledger)
    statuses = {line.split()[0]: line.split()[2] for line in ok("keys", "list", "--ledger", ledger).splitlines()}
    assert statuses == {key_id: "revoked", new_id: "revoked"}

    ok(
        "tenants",
        "create",
        "newco",
        "--ledger",
        ledger,
        "--rpm",
        "20",
        "--budget",
        "usd:monthly:100:80",
        "--budget",
        "kwh:daily:2",
    )
    tenants = ok("tenants", "list", "--config", cfg, "--ledger", ledger)
    assert "newco" in tenants and "usd/monthly hard=100.0 soft=80.0" in tenants and "acme" in tenants
    assert ok("keys", "create", "--tenant", "newco", "--ledger", ledger).strip().splitlines()[-1].startswith("fr-")


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(cli_env, ok, fails):
    cfg, ledger = cli_env
    key_id = ok("keys", "create", "--tenant", "acme", "--config", cfg, "--ledger", ledger).split()[1]
    ok("keys", "revoke", key_id, "--ledger", ledger)
    keys_before = ok("keys", "list", "--ledger", ledger)
    tenants_before = ok("tenants", "list", "--ledger", ledger)

    create = ("keys", "create", "--config", cfg, "--ledger", ledger)
    fails("unknown tenant 'ghost'", *create, "--tenant", "ghost")
    fails("above the tenant's limit of 10", *create, "--tenant", "acme", "--rpm", "11")
    fails("--rpm 'ten': expected an integer", *create, "--tenant", "acme", "--rpm", "ten")
    fails("limits: requests_per_minute: Input should be greater than 0", *create, "--tenant", "acme", "--rpm", "-3")
    fails("--expires-in '-5': must be a positive", *create, "--tenant", "acme", "--expires-in", "-5")
    fails(f"API key {key_id} is revoked already", "keys", "revoke", key_id, "--ledger", ledger)
    fails(f"API key {key_id} is revoked already", "keys", "rotate", key_id, "--ledger", ledger)
    fails("no API key with id 'key_nope'", "keys", "revoke", "key_nope", "--ledger", ledger)
    tenant = ("tenants", "create", "newco", "--ledger", ledger)
    fails("budgets.0.hard: Input should be greater than or equal to 0", *tenant, "--budget", "usd:daily:-1")
    fails("hard 'lots'", *tenant, "--budget", "usd:daily:lots")
    fails("overlapping budgets", *tenant, "--budget", "usd:daily:1", "--budget", "usd:daily:2")
    fails("budgets.0.period", *tenant, "--budget", "usd:weekly:1")
    fails("a tenant named 'acme' exists already", "tenants", "create", "acme", "--config", cfg, "--ledger", ledger)

    assert ok("keys", "list", "--ledger", ledger) == keys_before
    assert ok("tenants", "list", "--ledger", ledger) == tenants_before
