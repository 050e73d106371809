"""Resilient dispatch against misbehaving upstreams: outlier ejection and its single probe, the
ejection share cap, the retry budget under a full outage, the request deadline, load shedding and
hedging. Bounds are generous on purpose: these tests must never flake on a busy machine."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import backend_entry
from tests.openai_schema import validate

MSG = [{"role": "user", "content": "hello"}]


def _post(
    gw, tenant: str = "acme", stream: bool = False, max_tokens: int = 2, client: httpx.Client | None = None, **extra
) -> httpx.Response:
    body = {"model": "m1", "messages": MSG, "max_tokens": max_tokens, "stream": stream, **extra}
    return (client or httpx).post(gw.url + "/v1/chat/completions", headers=gw.auth(tenant), json=body, timeout=30)


def _backend(gw, name: str) -> dict:
    backends = httpx.get(gw.url + "/admin/v1/backends", headers=gw.admin(), timeout=10).json()["data"]
    return next(b for b in backends if b["name"] == name)["stats"]


def _cheap_and_dear(start_sim_backend, **a_extra):
    a = start_sim_backend("a")
    b = start_sim_backend("b")
    entries = [
        backend_entry(a, price={"input": 0.1, "output": 0.1}, energy={"joules_per_token": 0.1}, **a_extra),
        backend_entry(b, price={"input": 5.0, "output": 5.0}, energy={"joules_per_token": 2.0}),
    ]
    return a, b, entries


def test_failing_backend_is_ejected_then_probed_by_one_request(start_sim_backend, start_gateway):
    # "a" fails slowly (its answer never comes within its 0.2 s), so a probe overlaps other requests.
    a, _b, entries = _cheap_and_dear(start_sim_backend, timeouts={"total": 0.2})
    gw = start_gateway(
        entries, routing={"exploration": 0.0, "retries_per_backend": 0, "eject_after_failures": 3, "eject_seconds": 0.5}
    )
    a.set(ttft_s=2.0)
    for _ in range(3):
        assert _post(gw).headers["x-fedrouter-backend"] == "b"
    assert a.stats()["requests"] == 3
    assert _backend(gw, "a")["ejected"] is True
    for _ in range(3):  # while ejected, "a" gets no traffic at all
        assert _post(gw).headers["x-fedrouter-backend"] == "b"
    assert a.stats()["requests"] == 3

    time.sleep(0.6)  # the ejection lapses: the next request probes "a", concurrent ones go elsewhere
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post(gw), range(6)))
    assert [r.status_code for r in answers] == [200] * 6
    assert a.stats()["requests"] == 4, "exactly one real request probes an ejected backend"
    stats = _backend(gw, "a")
    assert stats["ejected"] is True and stats["models"]["m1"]["ejections"] == 2, "a failed probe ejects it longer"

    a.set(ttft_s=0.0)
    time.sleep(1.1)  # 2 x 0.5 s
    assert _post(gw).headers["x-fedrouter-backend"] == "a", "a probe that succeeds brings it back"
    assert _post(gw).headers["x-fedrouter-backend"] == "a"
    assert _backend(gw, "a")["ejected"] is False


def test_never_more_than_the_share_cap_is_ejected(start_sim_backend, start_gateway):
    sims = [start_sim_backend(f"s{i}") for i in range(4)]
    for sim in sims:
        sim.set(fail_status=500)
    gw = start_gateway(
        [backend_entry(s) for s in sims],
        routing={
            "exploration": 0.0,
            "retries_per_backend": 0,
            "max_attempts": 4,
            "eject_after_failures": 2,
            "eject_seconds": 30,
            "max_ejected_share": 0.5,
            "retry_budget": {"min_per_s": 100},
        },
    )
    for _ in range(6):
        assert _post(gw).status_code == 503
    ejected = [s.name for s in sims if _backend(gw, s.name)["ejected"]]
    assert len(ejected) == 2, "half of the model's four backends at most"
    before = {s.name: s.stats()["requests"] for s in sims}
    assert _post(gw).status_code == 503
    after = {s.name: s.stats()["requests"] for s in sims}
    assert all(after[n] == before[n] for n in ejected)
    assert all(after[n] == before[n] + 1 for n in after if n not in ejected), "the rest keep serving"


def test_full_outage_attempts_stay_within_the_retry_budget(start_sim_backend, start_gateway):
    a, b, entries = _cheap_and_dear(start_sim_backend)
    a.set(fail_status=503)
    b.set(fail_status=503)
    # Ejection out of the way: this test is about the retry budget alone.
    gw = start_gateway(
        entries,
        routing={
            "exploration": 0.0,
            "max_attempts": 3,
            "retries_per_backend": 1,
            "backoff_initial": 0.001,
            "eject_after_failures": 1000,
            "eject_min_requests": 1000,
            "retry_budget": {"ratio": 0.2, "min_per_s": 0.5, "window_s": 10},
        },
    )
    n = 50
    with httpx.Client() as client:
        for _ in range(n):
            r = _post(gw, client=client)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            validate(r.json(), "ErrorResponse")
    upstream = a.stats()["requests"] + b.stats()["requests"]
    assert n <= upstream <= n + math.floor(0.2 * n + 0.5 * 10), f"{upstream} upstream attempts for {n} requests"
    assert "retry budget exhausted" in r.json()["error"]["message"]


def test_deadline_bounds_the_whole_request_and_is_not_the_backends_fault(start_sim_backend, start_gateway):
    slow = start_sim_backend("slow", stall_s=3.0)
    gw = start_gateway([backend_entry(slow)], routing={"deadline_s": 0.3})
    started = time.perf_counter()
    r = _post(gw, stream=True)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    validate(r.json(), "ErrorResponse")
    assert time.perf_counter() - started < 2.0
    stats = _backend(gw, "slow")
    assert stats["failures"] == 0 and stats["ejected"] is False


def test_client_errors_never_count_against_a_backend(start_sim_backend, start_gateway):
    a, _b, entries = _cheap_and_dear(start_sim_backend)
    gw = start_gateway(entries, routing={"exploration": 0.0, "eject_after_failures": 2})
    a.set(fail_status=400)
    for _ in range(5):
        assert _post(gw).status_code == 400
    stats = _backend(gw, "a")
    assert stats["failures"] == 0 and stats["ejected"] is False and stats["error_rate"] == 0


def test_load_shedding_refuses_at_once_while_streams_in_flight_finish(start_sim_backend, start_gateway):
    slow = start_sim_backend("slowgen", tokens_per_s=20)
    gw = start_gateway([backend_entry(slow)], limits={"max_concurrency": 2})
    body = {"model": "m1", "messages": MSG, "max_tokens": 20, "stream": True}
    with httpx.Client(timeout=30) as client:
        streams = [
            client.stream("POST", gw.url + "/v1/chat/completions", headers=gw.auth(), json=body) for _ in range(2)
        ]
        responses = [s.__enter__() for s in streams]
        lines = [r.iter_lines() for r in responses]
        for it in lines:  # both are in flight: their first event has arrived
            assert next(line for line in it if line.startswith("data: ")).startswith("data: {")
        started = time.perf_counter()
        refused = client.post(gw.url + "/v1/chat/completions", headers=gw.auth(), json={**body, "stream": False})
        assert time.perf_counter() - started < 0.5
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.headers["x-request-id"]
        validate(refused.json(), "ErrorResponse")
        assert refused.json()["error"]["code"] == "overloaded"
        assert client.get(gw.url + "/healthz").status_code == 200, "only inference requests are shed"
        for it in lines:
            assert [line for line in it if line.startswith("data: ")][-1] == "data: [DONE]"
        for s in streams:
            s.__exit__(None, None, None)
        deadline = time.monotonic() + 5  # the streams' last bytes are out; their bookkeeping ends just after
        while (r := _post(gw, client=client)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.status_code == 200, "capacity is back once they ended"
    assert slow.stats()["requests"] == 3


def _hedge_tenants() -> list[dict]:
    # "ta" goes to "a" first (cheaper), "tb" to "b" first (greener).
    return [{"name": "ta", "policy": {"weights": {"price": 1}}}, {"name": "tb", "policy": {"weights": {"energy": 1}}}]


def _hedge_pair(start_sim_backend):
    a = start_sim_backend("a", ttft_s=0.01, stall_s=1.0, stall_probability=0.0)
    b = start_sim_backend("b", ttft_s=0.01)
    entries = [
        backend_entry(a, price={"input": 0.1, "output": 0.1}, energy={"joules_per_token": 2.0}),
        backend_entry(b, price={"input": 5.0, "output": 5.0}, energy={"joules_per_token": 0.1}),
    ]
    return a, b, entries


def _run(gw, tenants: list[str], stream: bool = True) -> list[tuple[float, httpx.Response]]:
    def one(tenant: str) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        r = _post(gw, tenant, stream=stream, client=client)
        return time.perf_counter() - started, r

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, tenants))


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


@pytest.mark.timeout(60)
def test_hedging_cuts_the_tail_of_a_backend_that_stalls_one_time_in_ten(start_sim_backend, start_gateway):
    workload = ["ta" if i % 4 == 0 else "tb" for i in range(200)]  # "a" comes first for a quarter
    p99 = {}
    for hedging in (False, True):
        a, _b, entries = _hedge_pair(start_sim_backend)
        gw = start_gateway(
            entries,
            tenants=_hedge_tenants(),
            routing={"exploration": 0.0, "hedging": {"enabled": hedging, "delay": 0.2, "max_share": 0.05}},
        )
        _run(gw, ["ta", "tb"] * 20)  # warm up: measurements and a request history
        a.set(stall_probability=0.1)
        results = _run(gw, workload)
        assert all(r.status_code == 200 for _, r in results)
        p99[hedging] = _p99([t for t, _ in results])
        stalled = a.stats()["stalled"]
        assert stalled >= 3, "the workload must show the stalls"
        if hedging:
            hedged = sum(r.headers["x-fedrouter-attempts"] == "2" for _, r in results)
            assert 1 <= hedged <= 0.05 * (len(workload) + 40), f"{hedged} hedges"
            rescued = sum(r.headers["x-fedrouter-backend"] == "b" for t, r in results[::4])
            assert rescued >= 1
            assert a.stats()["cancelled_streams"] >= rescued, "every losing stall is cancelled"
    assert p99[False] >= 0.9, p99
    assert p99[True] < 0.5 and p99[True] < p99[False] / 2, p99


def test_hedge_after_p95_ttft_bills_only_the_winner(start_sim_backend, start_gateway):
    a, b, entries = _hedge_pair(start_sim_backend)
    gw = start_gateway(
        entries,
        tenants=_hedge_tenants(),
        routing={"exploration": 0.0, "hedging": {"enabled": True, "delay": "p95_ttft", "tenants": ["ta"]}},
    )
    _run(gw, ["ta"] * 30)  # 30 measurements of "a": a p95 of its time to first token
    p95 = _backend(gw, "a")["models"]["m1"]["ttft_p95_s"]
    assert p95 is not None and p95 < 0.2
    a.set(stall_probability=1.0)  # every stream of "a" now stalls for a second
    started = time.perf_counter()
    r = _post(gw, "ta", stream=True)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert r.headers["x-fedrouter-backend"] == "b" and r.headers["x-fedrouter-attempts"] == "2"
    assert elapsed < 0.8, "the hedge answered long before the stall ended"
    deadline = time.monotonic() + 3
    while a.stats()["cancelled_streams"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.stats()["cancelled_streams"] == 1, "the losing attempt is cancelled"
    request_id = r.headers["x-request-id"]
    deadline = time.monotonic() + 3
    rows: list[dict] = []
    while len(rows) < 2 and time.monotonic() < deadline:
        rows = [x for x in gw.usage("ta")["recent"] if x["request_id"] == request_id]
        time.sleep(0.05)
    by_kind = {x["kind"]: x for x in rows}
    assert set(by_kind) == {"request", "hedge"}
    assert by_kind["request"]["backend"] == "b" and by_kind["request"]["billed"] in (True, 1)
    loser = by_kind["hedge"]
    assert loser["backend"] == "a" and loser["billed"] in (False, 0) and loser["input_tokens"] > 0
    assert loser["outcome"] == "cancelled"
    totals = gw.usage("ta")["totals"]
    assert totals["requests"] == 31, "the tenant pays for the winner only"
    # tenant "tb" is not latency-sensitive here: never hedged
    b.set(stall_s=0.3)
    assert _post(gw, "tb", stream=True).headers["x-fedrouter-attempts"] == "1"


def test_non_streamed_requests_are_hedged_too(start_sim_backend, start_gateway):
    a, _b, entries = _hedge_pair(start_sim_backend)
    gw = start_gateway(
        entries, tenants=_hedge_tenants(), routing={"exploration": 0.0, "hedging": {"enabled": True, "delay": 0.1}}
    )
    _run(gw, ["ta"] * 20, stream=False)  # requests for the hedge budget to be a share of
    a.set(ttft_s=2.0)
    started = time.perf_counter()
    r = _post(gw, "ta")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert r.headers["x-fedrouter-backend"] == "b" and r.headers["x-fedrouter-attempts"] == "2"
    assert time.perf_counter() - started < 1.5
    rows: list[dict] = []
    deadline = time.monotonic() + 3
    while len(rows) < 2 and time.monotonic() < deadline:
        rows = [x for x in gw.usage("ta")["recent"] if x["request_id"] == r.headers["x-request-id"]]
        time.sleep(0.05)
    assert sorted((x["kind"], x["backend"], bool(x["billed"])) for x in rows) == [
        ("hedge", "a", False),
        ("request", "b", True),
    ]
