"""Budgets that never overshoot: arithmetic, one contract suite over memory and Redis, every exit path
settling, 200 concurrent requests in one process and across two gateway processes on one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import pytest_asyncio
import redis

from router.config import Budget, RateLimits
from router.ledger import open_ledger
from router.ledger.base import UsageRecord
from router.tenancy.admission.base import DEFAULT_MAX_OUTPUT, Demand, output_bound
from router.tenancy.admission.memory import LocalAdmission
from router.tenancy.admission.redis import RedisAdmission
from router.tenancy.budgets import NANO, Amounts, BudgetExceeded, lines, nano, period_start
from tests.conftest import backend_entry
from tests.openai_schema import validate
from tests.processes import free_port, run, spawn, wait_ready
from tests.servers import admin

REDIS = "redis://127.0.0.1:6379/0"
BODY = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50})
DEAR = {"input": 3.0, "output": 6.0}  # USD per 1M tokens
WORST_USD = (len(BODY) * DEAR["input"] + 50 * DEAR["output"]) / 1e6  # the body's bytes bound its prompt tokens


# -- arithmetic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start"),
    [
        ("daily", "2025-03-31T23:59:59", "2025-03-31T00:00:00"),
        ("daily", "2025-04-01T00:00:00", "2025-04-01T00:00:00"),
        ("monthly", "2025-12-31T12:00:00", "2025-12-01T00:00:00"),
        ("monthly", "2026-01-01T00:00:01", "2026-01-01T00:00:00"),
        ("total", "2025-06-15T10:00:00", None),
    ],
)
def test_periods_are_utc(period, now, start):
    ts = datetime.fromisoformat(now).replace(tzinfo=UTC).timestamp()
    got = period_start(period, ts)
    assert (got and got.isoformat()) == (start and start + "+00:00")


def test_lines_name_their_period_and_round_limits_down():
    ts = datetime(2025, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    got = lines(
        [Budget(metric="usd", period="monthly", hard=0.3, soft=0.1), Budget(metric="kwh", period="total", soft=2)], ts
    )
    assert [(x.key, x.hard, x.soft, x.since) for x in got] == [
        ("usd:monthly:2025-12", 300_000_000, 100_000_000, datetime(2025, 12, 1).date()),
        ("kwh:total:total", None, 2 * NANO, None),
    ]
    assert 0 < got[0].ttl_s < 3 * 86400 and got[1].ttl_s is None


def test_costs_round_up_and_outputs_are_bounded():
    assert nano(0.1 + 0.2, "usd") == 300_000_001  # 0.30000000000000004 USD: never rounded down
    assert nano(1.0, "kwh") == 1_000_000 and nano(1000.0, "kg_co2e") == NANO  # Wh -> kWh, g -> kg
    assert output_bound("chat/completions", {"max_tokens": 10, "max_completion_tokens": 30, "n": 2}) == (60, True)
    assert output_bound("completions", {}) == (DEFAULT_MAX_OUTPUT, False)
    assert output_bound("embeddings", {"input": "x"}) == (0, True)


# -- one contract, two implementations -------------------------------------------------------------


@pytest_asyncio.fixture(params=["memory", "redis"])
async def admission(request, tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    await ledger.start()
    prefix = f"fedrouter-test:{secrets.token_hex(6)}:"
    impl = LocalAdmission(ledger) if request.param == "memory" else RedisAdmission(REDIS, prefix, ledger, 600.0)
    yield impl, ledger
    await impl.close()
    await ledger.close()
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


_BUDGET = (Budget(metric="usd", period="total", hard=1.0, soft=0.5),)


def _demand(usd: float, budgets: tuple[Budget, ...] = _BUDGET) -> Demand:
    return Demand(
        "req_" + secrets.token_hex(6),
        "acme",
        "key_a",
        RateLimits(),
        None,
        budgets,
        10,
        Amounts(round(usd * NANO), 0, 0),
        False,
        time.time(),
    )


def _record(cost_usd: float, request_id: str = "req_x") -> UsageRecord:
    return UsageRecord(
        request_id,
        time.time(),
        "acme",
        "dc1",
        "datacenter",
        None,
        "m1",
        "chat/completions",
        10,
        10,
        cost_usd,
        0.0,
        1.0,
        None,
        "ok",
        "upstream",
        1,
        False,
    )


@pytest.mark.asyncio
async def test_reservations_refuse_past_the_hard_limit_and_settle_to_the_real_cost(admission):
    impl, _ = admission
    first = await impl.admit(_demand(0.4))
    assert "x-fedrouter-budget-warning" not in first.headers
    second = await impl.admit(_demand(0.4))
    assert "past the soft limit of 0.5" in second.headers["x-fedrouter-budget-warning"]
    with pytest.raises(BudgetExceeded) as refused:
        await impl.admit(_demand(0.4))
    assert refused.value.status == 429 and refused.value.should_retry is False
    assert "total usd budget of 1 USD" in refused.value.message and "0.8 USD held" in refused.value.message
    await impl.settle(first, _record(0.1))
    third = await impl.admit(_demand(0.4))  # 0.1 spent + 0.4 + 0.4 held
    state = (await impl.budgets("acme", list(_BUDGET)))[0]
    assert (state["spent"], state["reserved"], state["remaining"]) == (0.1, 0.8, pytest.approx(0.1))
    await impl.settle(second, None)
    await impl.settle(third, _record(0.25))
    await impl.settle(third, _record(0.25))  # twice is once
    state = (await impl.budgets("acme", list(_BUDGET)))[0]
    assert (state["spent"], state["reserved"]) == (0.35, 0.0)


@pytest.mark.asyncio
async def test_spend_starts_from_the_ledger(admission):
    impl, ledger = admission
    await ledger.submit(_record(0.7, "req_old"))
    monthly = (Budget(metric="usd", period="monthly", hard=1.0),)
    state = (await impl.budgets("acme", list(monthly)))[0]
    assert state["spent"] == 0.7 and state["since"] == period_start("monthly", time.time()).date().isoformat()
    with pytest.raises(BudgetExceeded):
        await impl.admit(_demand(0.4, monthly))
    ticket = await impl.admit(_demand(0.3, monthly))
    await impl.settle(ticket, None)


# -- over HTTP: every exit path settles ------------------------------------------------------------


def _budget_state(url: str, tenant: str = "acme") -> dict:
    resp = httpx.get(url + f"/admin/v1/tenants/{tenant}", headers=admin(), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["budgets"][0]


def _settled(url: str, tenant: str = "acme", timeout: float = 10.0) -> dict:
    """The budget once nothing is held any more: every reservation came back."""
    deadline = time.monotonic() + timeout
    while True:
        state = _budget_state(url, tenant)
        if state["reserved"] == 0 or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def _ledger_cost(url: str, tenant: str = "acme") -> float:
    resp = httpx.get(url + "/admin/v1/usage", params={"tenant": tenant}, headers=admin(), timeout=10)
    return float(resp.json()["totals"]["cost_usd"])


def _config(*sims, hard: float = 100.0, soft: float | None = None, **backend):
    entries = [
        backend_entry(s, price=DEAR if i == 0 else {"input": 1.0, "output": 2.0}, **backend) for i, s in enumerate(sims)
    ]
    budget = {"metric": "usd", "period": "total", "hard": hard} | ({"soft": soft} if soft is not None else {})
    return {"backends": entries, "tenants": [{"name": "acme", "budgets": [budget]}]}


@pytest.fixture
def key_for():
    def create(url: str, tenant: str = "acme") -> dict[str, str]:
        resp = httpx.post(url + "/admin/v1/keys", headers=admin(), json={"tenant": tenant})
        return {"authorization": f"Bearer {resp.json()['key']}"}

    return create


@pytest.mark.parametrize(
    "path",
    [
        "ok",
        "stream_ok",
        "upstream_error",
        "client_error",
        "first_token_timeout",
        "stream_disconnect",
        "stream_cut",
        "client_gives_up",
        "no_max_tokens",
    ],
)
def test_every_exit_path_settles_to_the_ledger(start_sim_backend, start_gateway, key_for, path):
    sim = start_sim_backend("dc1")
    backend = {"timeouts": {"first_token": 0.3, "total": 0.3}} if path == "first_token_timeout" else {}
    with start_gateway(**_config(sim, **backend)) as gw:
        url = gw.url
        auth = key_for(url)
        body = orjson.loads(BODY)
        stream = path.startswith("stream")
        if path == "upstream_error":
            sim.set(fail_status=500)
        elif path == "client_error":
            sim.set(fail_status=400)
        elif path in ("first_token_timeout", "client_gives_up"):
            sim.set(ttft_s=1.0)
        elif stream:
            sim.set(tokens_per_s=40.0, drop_after_chunks=5 if path == "stream_cut" else -1)
        elif path == "no_max_tokens":
            del body["max_tokens"]
        with httpx.Client(timeout=0.3 if path == "client_gives_up" else 10) as client:
            if stream:
                with client.stream(
                    "POST", url + "/v1/chat/completions", headers=auth, json={**body, "stream": True}
                ) as resp:
                    assert resp.status_code == 200
                    if path == "stream_disconnect":
                        next(resp.iter_bytes())  # then leave
                    else:
                        b"".join(resp.iter_bytes())
            elif path == "client_gives_up":
                with pytest.raises(httpx.ReadTimeout):
                    client.post(url + "/v1/chat/completions", headers=auth, json=body)
            else:
                resp = client.post(url + "/v1/chat/completions", headers=auth, json=body)
                expected = {"upstream_error": 503, "client_error": 400, "first_token_timeout": 503}.get(path, 200)
                assert resp.status_code == expected, resp.text
        if path == "no_max_tokens":  # capped upstream so the reservation is a bound
            assert sim.last_request()["body"]["max_tokens"] == DEFAULT_MAX_OUTPUT
        time.sleep(1.0 if path == "client_gives_up" else 0.0)  # when the backend would have answered
        state = _settled(url)
        assert state["reserved"] == 0
        assert state["spent"] == pytest.approx(_ledger_cost(url), abs=1e-9)
        # A client that gave up before its answer cancelled it: nothing delivered, nothing billed.
        unpaid = ("upstream_error", "client_error", "first_token_timeout", "client_gives_up")
        assert (state["spent"] > 0) == (path not in unpaid)


def test_soft_limit_warns_and_energy_and_carbon_budgets_refuse(start_sim_backend, start_gateway, key_for):
    sim = start_sim_backend("dc1")
    config = _config(sim, hard=1.0, soft=WORST_USD / 2, carbon_intensity=500.0)
    config["tenants"].append(
        {
            "name": "green",
            "budgets": [
                {"metric": "kwh", "period": "daily", "hard": 1.0},
                {"metric": "kg_co2e", "period": "monthly", "hard": 1e-9},
            ],
        }
    )
    with start_gateway(**config) as gw:
        url = gw.url
        resp = httpx.post(url + "/v1/chat/completions", headers=key_for(url), content=BODY)
        assert resp.status_code == 200
        assert "total usd budget" in resp.headers["x-fedrouter-budget-warning"]
        refused = httpx.post(url + "/v1/chat/completions", headers=key_for(url, "green"), content=BODY)
        assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
        validate(refused.json(), "ErrorResponse")
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
        assert "monthly kg_co2e budget" in error["message"] and "tenant 'green'" in error["message"]


def test_spend_survives_a_restart(start_sim_backend, start_gateway, tmp_path, key_for):
    sim = start_sim_backend("dc1")
    ledger = f"sqlite:///{tmp_path / 'gw.db'}"
    config = _config(sim, hard=WORST_USD * 3.5)
    with start_gateway(**config, settings={"ledger": ledger}) as gw:
        url = gw.url
        auth = key_for(url)
        for _ in range(3):
            assert httpx.post(url + "/v1/chat/completions", headers=auth, content=BODY).status_code == 200
        spent = _settled(url)["spent"]
    assert spent == pytest.approx(3 * (4 * DEAR["input"] + 50 * DEAR["output"]) / 1e6, rel=0.3)
    config["tenants"][0]["budgets"][0]["hard"] = spent + WORST_USD * 0.9  # less than one worst case left
    with start_gateway(**config, settings={"ledger": ledger}) as gw:
        url = gw.url
        assert _budget_state(url)["spent"] == pytest.approx(spent, abs=3e-9)  # ledger sum, rounded up
        refused = httpx.post(url + "/v1/chat/completions", headers=auth, content=BODY)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"


# -- 200 at once: never a cent over --------------------------------------------------------------


async def _storm(urls: list[str], auth: dict[str, str], n: int = 200) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(urls[i % len(urls)] + "/v1/chat/completions", headers=auth, content=BODY) for i in range(n))
        )


def _storms(urls: list[str], auth: dict[str, str], hard: float) -> list[int]:
    """Bursts of concurrent requests until one gets nothing through; after each, the ledger's
    spend is within the budget and every reservation has come back."""
    served: list[int] = []
    while not served or served[-1] > 0:
        responses = asyncio.run(_storm(urls, auth, 40 if served else 200))  # then smaller bursts, to save time
        refused = [r for r in responses if r.status_code != 200]
        assert all(
            r.status_code == 429
            and r.json()["error"]["code"] == "budget_exceeded"
            and r.headers["x-should-retry"] == "false"
            for r in refused
        ), {r.status_code for r in refused}
        served.append(len(responses) - len(refused))
        spent = _ledger_cost(urls[0])
        assert spent <= hard, f"overshoot of {spent - hard} USD"
        for url in urls:
            state = _settled(url)
            assert state["reserved"] == 0  # every reservation came back
            assert state["spent"] == pytest.approx(spent, abs=sum(served) * 1e-9)
        assert len(served) < 30
    assert served[0] >= 10  # the first burst fits 10 worst cases at least
    assert state["spent"] + WORST_USD > hard  # and the budget is spent down to less than one more
    return served


def test_200_concurrent_requests_never_overshoot_in_process(start_sim_backend, start_gateway, key_for):
    dear, cheap = start_sim_backend("dear", ttft_s=0.05), start_sim_backend("cheap", ttft_s=0.05)
    hard = WORST_USD * 10 * (1 + 1e-9)  # 10 worst cases, each rounded up to the next 1e-9 USD
    with start_gateway(**_config(dear, cheap, hard=hard)) as gw:
        url = gw.url
        _storms([url], key_for(url), hard)


@contextlib.contextmanager
def _gateway_process(cfg: str, ledger: str, prefix: str):
    port = free_port()
    env = {"FEDROUTER_ADMIN_KEY": admin()["authorization"].split()[1], "FEDROUTER_STATE_PREFIX": prefix}
    with spawn("serve", "--config", cfg, "--port", str(port), "--ledger", ledger, "--state", REDIS, env=env) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}"


def test_200_concurrent_requests_across_two_gateways_on_one_redis(start_sim_backend, tmp_path):
    dear, cheap = start_sim_backend("dear", ttft_s=0.05), start_sim_backend("cheap", ttft_s=0.05)
    hard = WORST_USD * 10 * (1 + 1e-9)
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(orjson.dumps(_config(dear, cheap, hard=hard)).decode())  # JSON is YAML
    ledger = f"sqlite:///{tmp_path / 'shared.db'}"
    created = run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    auth = {"authorization": f"Bearer {created.stdout.split()[-1]}"}
    prefix = f"fedrouter-test:{secrets.token_hex(6)}:"
    try:
        with _gateway_process(str(cfg), ledger, prefix) as one, _gateway_process(str(cfg), ledger, prefix) as two:
            served = _storms([one, two], auth, hard)
            assert sum(served) == int(
                httpx.get(one + "/admin/v1/usage", params={"tenant": "acme"}, headers=admin()).json()["totals"][
                    "requests"
                ]
            )
            held = redis.Redis.from_url(REDIS).hgetall(f"{prefix}adm:br:acme")
            assert {k: int(v) for k, v in held.items()} == {b"usd": 0, b"kwh": 0, b"kg_co2e": 0}
    finally:
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
