"""Policies: table tests for every scorer and filter, a property test that hard constraints hold
whatever the weights, and the presets choosing what they promise over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import filters, pickers
from policies.base import (
    CLASS_TRUST,
    Candidate,
    Constraints,
    EnergyEstimate,
    MaxPrice,
    Profile,
    RequestShape,
    Scored,
    Stats,
    Weights,
)
from policies.presets import PRESETS
from policies.scorers import (
    PRIOR_CAPACITY,
    PRIOR_TOKENS_PER_S,
    PRIOR_TTFT_S,
    carbon_cost,
    energy_cost,
    latency_cost,
    load_cost,
    normalise,
    price_cost,
    trust_cost,
)
from providers.base import BackendInfo
from router.config import ConfigError, parse_config
from tests.conftest import backend_entry

ALL = frozenset({"datacenter", "sovereign", "volunteer"})
REQ = RequestShape(1000, 100)


def cand(
    name="a",
    cls="datacenter",
    zone=None,
    price=(1.0, 2.0),
    energy=(0.5, 0.5, "declared"),
    intensity=100.0,
    trust=None,
    context=None,
    caps=None,
    max_conc=None,
    **stats,
) -> Candidate:
    info = BackendInfo(name, cls, "openai", {"m": "m"}, zone=zone, max_concurrency=max_conc)
    est = EnergyEstimate(*energy) if energy else EnergyEstimate(None, None, "none")
    profile = Profile(
        info,
        "m",
        price[0] if price else None,
        price[1] if price else None,
        est,
        intensity,
        CLASS_TRUST[cls] if trust is None else trust,
        context,
        caps,
    )
    return Candidate(profile, Stats(**stats), est)


# ---- scorers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (cand(ttft_s=0.2, tokens_per_s=100.0), 0.2 + 100 / 100),
        (cand(), PRIOR_TTFT_S + 100 / PRIOR_TOKENS_PER_S),  # never measured: the priors
        (cand(ttft_s=0.0, tokens_per_s=None), 0.0 + 100 / PRIOR_TOKENS_PER_S),
    ],
)
def test_latency_cost(c, expected):
    assert latency_cost(c, REQ) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (cand(price=(1.0, 2.0)), (1000 * 1.0 + 100 * 2.0) / 1e6),
        (cand(price=(0.0, 0.0)), 0.0),
        (cand(price=None), None),
    ],
)
def test_price_cost(c, expected):
    assert price_cost(c, REQ) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (cand(energy=(0.5, 0.5, "declared")), 1100 * 0.5),  # declared: every token
        (cand(energy=(0.0, 0.3, "derived")), 100 * 0.3),  # derived/measured: per generated token
        (cand(energy=None), None),
    ],
)
def test_energy_cost(c, expected):
    assert energy_cost(c, REQ) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (cand(energy=(0.5, 0.5, "declared"), intensity=100.0), 550 * 100.0 / 3.6e6),
        (cand(energy=(0.5, 0.5, "declared"), intensity=None), None),
        (cand(energy=None, intensity=100.0), None),
    ],
)
def test_carbon_cost(c, expected):
    assert carbon_cost(c, REQ) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (cand(inflight=4, max_conc=8), 0.5),
        (cand(inflight=4), 4 / PRIOR_CAPACITY),
        (cand(), 0.0),
    ],
)
def test_load_cost(c, expected):
    assert load_cost(c, REQ) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (cand(cls="sovereign"), 0.0),
        (cand(cls="datacenter"), 0.1),
        (cand(cls="volunteer"), 0.5),
        (cand(cls="volunteer", trust=0.8), 0.2),  # declared per backend
        (cand(cls="datacenter", error_rate=0.5), 1 - 0.9 * 0.5),  # failures lower it
    ],
)
def test_trust_cost(c, expected):
    assert trust_cost(c, REQ) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("costs", "scores"),
    [
        ([1.0, 2.0, 3.0], [1.0, 0.5, 0.0]),
        ([None, 1.0, 3.0], [0.0, 1.0, 0.0]),  # unknown scores as the worst known
        ([2.0, 2.0], [1.0, 1.0]),
        ([None, None], [1.0, 1.0]),
        ([], []),
    ],
)
def test_normalise(costs, scores):
    assert normalise(costs) == pytest.approx(scores)


# ---- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c", "cons", "req", "reason"),
    [
        (cand(), Constraints(ALL), REQ, None),
        (cand(cls="volunteer"), Constraints(ALL - {"volunteer"}), REQ, "class volunteer not allowed"),
        (cand(zone="US"), Constraints(ALL, zones=frozenset({"FR"})), REQ, "zone US not allowed"),
        (cand(name="x"), Constraints(ALL, only=frozenset({"y"})), REQ, "not in provider.only"),
        (cand(name="x"), Constraints(ALL, ignore=frozenset({"x"})), REQ, "in provider.ignore"),
        (cand(ejected=True), Constraints(ALL), REQ, "ejected after failures"),
        (cand(inflight=2, max_conc=2), Constraints(ALL), REQ, "at its concurrency limit"),
        (cand(context=1099), Constraints(ALL), REQ, "context length 1099 < 1100 tokens"),
        (cand(context=1100), Constraints(ALL), REQ, None),
        (
            cand(caps=frozenset({"json_mode"})),
            Constraints(ALL),
            RequestShape(10, 10, frozenset({"tools"})),
            "lacks tools",
        ),
        (cand(caps=None), Constraints(ALL), RequestShape(10, 10, frozenset({"tools"})), None),  # undeclared
        (cand(caps=frozenset({"tools", "vision"})), Constraints(ALL), RequestShape(10, 10, frozenset({"tools"})), None),
        (
            cand(price=(1.0, 2.0)),
            Constraints(ALL, max_price=MaxPrice(completion=1.5)),
            REQ,
            "completion price 2 > max_price.completion",
        ),
        (
            cand(price=(1.0, 2.0)),
            Constraints(ALL, max_price=MaxPrice(prompt=0.5)),
            REQ,
            "prompt price 1 > max_price.prompt",
        ),
        (
            cand(price=(1.0, 2.0)),
            Constraints(ALL, max_price=MaxPrice(request=0.001)),
            REQ,
            "request cost 0.0012 > max_price.request",
        ),
        (cand(price=(1.0, 2.0)), Constraints(ALL, max_price=MaxPrice(request=0.002, completion=2)), REQ, None),
        (cand(price=None), Constraints(ALL, max_price=MaxPrice(completion=100)), REQ, "price unknown"),
        (cand(intensity=100.0), Constraints(ALL, max_carbon_g=0.01), REQ, "carbon 0.0153 g > max_carbon_g"),
        (cand(intensity=None), Constraints(ALL, max_carbon_g=10), REQ, "carbon unknown"),
        (cand(intensity=100.0), Constraints(ALL, max_carbon_g=0.02), REQ, None),
        (cand(cls="volunteer"), Constraints(ALL, min_trust=0.6), REQ, "trust 0.50 < min_trust"),
        (cand(cls="sovereign", error_rate=0.5), Constraints(ALL, min_trust=0.6), REQ, "trust 0.50 < min_trust"),
        (cand(cls="sovereign"), Constraints(ALL, min_trust=0.6), REQ, None),
    ],
)
def test_filters(c, cons, req, reason):
    assert filters.admissible(c, cons, req) == reason


def test_split_keeps_order_and_names_reasons():
    kept, rejected = filters.split([cand("a"), cand("b", ejected=True), cand("c")], Constraints(ALL), REQ)
    assert [c.info.name for c in kept] == ["a", "c"]
    assert rejected == {"b": "ejected after failures"}


def test_allowed_classes_respects_volunteer_opt_in():
    policy = PRESETS["balanced"]
    assert filters.allowed_classes(policy, False) == ALL - {"volunteer"}
    assert filters.allowed_classes(policy, True) == ALL
    assert filters.allowed_classes(PRESETS["sovereign-only"], True) == {"sovereign"}


# ---- pickers --------------------------------------------------------------------------------


def test_score_weights_and_parts():
    cheap = cand("cheap", price=(0.1, 0.1), ttft_s=1.0, tokens_per_s=10.0)
    fast = cand("fast", price=(5.0, 5.0), ttft_s=0.01, tokens_per_s=1000.0)
    by_price = pickers.score([fast, cheap], REQ, Weights(price=1.0))
    assert [s.candidate.info.name for s in by_price] == ["cheap", "fast"]
    assert by_price[0].parts == {"price": 1.0}  # only weighted scorers run
    by_latency = pickers.score([cheap, fast], REQ, Weights(latency=3.0, price=1.0))
    assert by_latency[0].candidate.info.name == "fast"
    assert by_latency[0].score == pytest.approx(0.75)
    assert set(by_latency[0].parts) == {"latency", "price"}


def test_order_explores_the_best_unmeasured():
    scored = [Scored(cand("m1", ttft_s=0.1), 0.9), Scored(cand("u1"), 0.5), Scored(cand("u2"), 0.4)]
    assert pickers.order(scored, 0.1, 0.5) is scored  # draw above the share: no exploration
    assert [s.candidate.info.name for s in pickers.order(scored, 0.1, 0.05)] == ["u1", "m1", "u2"]


def test_sort_by_and_prefer():
    a = Scored(cand("a", price=(3.0, 3.0), tokens_per_s=50.0), 0.9)
    b = Scored(cand("b", price=(1.0, 1.0), tokens_per_s=500.0), 0.5)
    c = Scored(cand("c", price=None), 0.1)
    assert [s.candidate.info.name for s in pickers.sort_by([a, b, c], "price", REQ)] == ["b", "a", "c"]
    assert [s.candidate.info.name for s in pickers.sort_by([a, b, c], "throughput", REQ)] == ["b", "a", "c"]
    assert [s.candidate.info.name for s in pickers.prefer([a, b, c], ["c", "b"], True)] == ["c", "b", "a"]
    assert [s.candidate.info.name for s in pickers.prefer([a, b, c], ["c", "zz"], False)] == ["c"]


# ---- hard constraints hold whatever the weights ---------------------------------------------

_weights = (
    st.fixed_dictionaries({k: st.floats(0, 10) for k in ("latency", "price", "energy", "carbon", "load", "trust")})
    .filter(lambda w: sum(w.values()) > 0)
    .map(lambda w: Weights(**w))
)

_candidates = st.lists(
    st.builds(
        lambda i, cls, zone, price, energy, intensity, ctx, caps, inflight, err, ej: cand(
            f"b{i}",
            cls,
            zone,
            price,
            energy,
            intensity,
            None,
            ctx,
            caps,
            4,
            inflight=inflight,
            error_rate=err,
            ejected=ej,
            ttft_s=0.1,
            tokens_per_s=50.0,
        ),
        st.integers(0, 10**6),
        st.sampled_from(sorted(ALL)),
        st.sampled_from([None, "FR", "US", "DE"]),
        st.one_of(st.none(), st.tuples(st.floats(0, 20), st.floats(0, 40))),
        st.one_of(st.none(), st.tuples(st.floats(0, 2), st.floats(0, 2), st.just("declared"))),
        st.one_of(st.none(), st.floats(0, 900)),
        st.one_of(st.none(), st.integers(1, 4000)),
        st.one_of(st.none(), st.frozensets(st.sampled_from(["tools", "json_mode", "vision", "embeddings"]))),
        st.integers(0, 5),
        st.floats(0, 1),
        st.booleans(),
    ),
    max_size=12,
    unique_by=lambda c: c.info.name,
)

_constraints = st.builds(
    Constraints,
    st.frozensets(st.sampled_from(sorted(ALL)), min_size=1),
    st.one_of(st.none(), st.frozensets(st.sampled_from(["FR", "US", "DE"]))),
    st.one_of(
        st.none(),
        st.builds(
            MaxPrice,
            prompt=st.one_of(st.none(), st.floats(0, 20)),
            completion=st.one_of(st.none(), st.floats(0, 40)),
            request=st.one_of(st.none(), st.floats(0, 0.1)),
        ),
    ),
    st.one_of(st.none(), st.floats(0.001, 1.0)),
    st.one_of(st.none(), st.floats(0, 1)),
)

_requests = st.builds(
    RequestShape,
    st.integers(0, 3000),
    st.integers(0, 2000),
    st.frozensets(st.sampled_from(["tools", "json_mode", "vision"])),
)


@settings(max_examples=300, deadline=None)
@given(_candidates, _constraints, _requests, _weights)
def test_hard_constraints_are_never_violated(candidates, cons, req, weights):
    kept, rejected = filters.split(candidates, cons, req)
    ranked = pickers.score(kept, req, weights)
    assert len(ranked) + len(rejected) == len(candidates)
    assert sorted(s.candidate.info.name for s in ranked) == sorted(c.info.name for c in kept)
    for s in ranked:
        c, p = s.candidate, s.candidate.profile
        assert 0.0 <= s.score <= 1.0 + 1e-9
        assert p.info.backend_class in cons.classes
        assert cons.zones is None or p.info.zone in cons.zones
        assert not c.stats.ejected and c.stats.inflight < 4
        assert p.context_length is None or req.input_tokens + req.max_output_tokens <= p.context_length
        assert p.capabilities is None or req.needs <= p.capabilities
        if cons.max_price is not None:
            assert p.price_input is not None and p.price_output is not None
            assert cons.max_price.prompt is None or p.price_input <= cons.max_price.prompt
            assert cons.max_price.completion is None or p.price_output <= cons.max_price.completion
            cost = (req.input_tokens * p.price_input + req.max_output_tokens * p.price_output) / 1e6
            assert cons.max_price.request is None or cost <= cons.max_price.request
        if cons.max_carbon_g is not None:
            joules = c.energy.joules(req.input_tokens, req.max_output_tokens)
            assert joules is not None and p.carbon_intensity is not None
            assert joules * p.carbon_intensity / 3.6e6 <= cons.max_carbon_g
        assert cons.min_trust is None or c.trust >= cons.min_trust


# ---- bad policies are config errors naming the key ------------------------------------------


def _tenant_policy(policy):
    return {
        "backends": [
            {
                "name": "b",
                "class": "sovereign",
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "models": ["m"],
                "zone": "FR",
            }
        ],
        "tenants": [{"name": "t", "policy": policy}],
    }


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"weights": {"speed": 1}}, "tenants[t].policy.weights: unknown key 'speed'"),
        ({"weights": {"latency": -1}}, "tenants[t].policy.weights.latency: Input should be greater than or equal to 0"),
        ({"weights": {"carbon": 0, "trust": 0}}, "tenants[t].policy.weights: policy weights must not all be zero"),
        ({"max_price": {"output": 3}}, "tenants[t].policy.max_price: unknown key 'output'"),
        ({"min_trust": 1.5}, "tenants[t].policy.min_trust: Input should be less than or equal to 1"),
        ({"max_carbon_g": 0}, "tenants[t].policy.max_carbon_g: Input should be greater than 0"),
        ({"zones": ["ATLANTIS"]}, "tenants[t].policy.zones: unknown zone 'ATLANTIS'"),
        ({"classes": ["cloud"]}, "tenants[t].policy.classes"),
        ("fastestt", "tenants[t].policy: unknown policy preset 'fastestt'"),
    ],
)
def test_bad_policies_name_the_key(policy, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(_tenant_policy(policy), "f.yaml")
    assert message in str(exc.value)


def test_a_policy_weight_not_written_is_zero():
    config = parse_config(_tenant_policy({"weights": {"carbon": 2}, "max_price": {"completion": 1}}))
    spec = config.tenants[0].policy_spec()
    assert spec.weights.active() == (("carbon", 2.0),)
    assert spec.max_price == MaxPrice(completion=1)


# ---- presets over HTTP ----------------------------------------------------------------------

MSG = [{"role": "user", "content": "hello"}]


def _served(gw, tenant, n=1, **body):
    names = []
    for _ in range(n):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            headers=gw.auth(tenant),
            timeout=10,
            json={"model": "m1", "messages": MSG, "max_tokens": 8, **body},
        )
        assert r.status_code == 200, r.text
        names.append(r.headers["x-fedrouter-backend"])
    return names


def _three(start_sim_backend, start_gateway):
    fast = start_sim_backend("fast", ttft_s=0.0, tokens_per_s=2000.0)
    slow = start_sim_backend("slow", ttft_s=0.12, tokens_per_s=100.0)
    medium = start_sim_backend("medium", ttft_s=0.04, tokens_per_s=500.0)
    tenants = [{"name": p, "policy": p} for p in ("fastest", "cheapest", "greenest", "balanced", "sovereign-only")]
    gw = start_gateway(
        [
            backend_entry(fast, zone="PL", price={"input": 5.0, "output": 15.0}, energy={"joules_per_token": 1.0}),
            backend_entry(slow, zone="SE", price={"input": 0.1, "output": 0.2}, energy={"joules_per_token": 0.3}),
            backend_entry(
                medium, "sovereign", zone="DE", price={"input": 1.0, "output": 2.0}, energy={"joules_per_token": 0.6}
            ),
        ],
        tenants=tenants,
        routing={"exploration": 0.0},
    )
    for name in ("fast", "slow", "medium"):  # measure every backend once
        assert _served(gw, "balanced", provider={"only": [name]}) == [name]
    return gw, fast


def test_presets_pick_what_they_promise(start_sim_backend, start_gateway):
    gw, _ = _three(start_sim_backend, start_gateway)
    assert _served(gw, "fastest", 3) == ["fast"] * 3
    assert _served(gw, "cheapest", 3) == ["slow"] * 3
    assert _served(gw, "greenest", 3) == ["slow"] * 3  # least energy on the cleanest grid
    assert _served(gw, "sovereign-only", 2) == ["medium"] * 2
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth("greenest"),
        timeout=10,
        json={"model": "m1", "messages": MSG, "max_tokens": 4},
    )
    _score, parts = r.headers["x-fedrouter-score"].split(";")
    assert {p.split("=")[0] for p in parts.split(",")} == {"energy", "carbon"}


def test_a_measured_slowdown_moves_traffic_within_a_few_requests(start_sim_backend, start_gateway):
    gw, fast = _three(start_sim_backend, start_gateway)
    assert _served(gw, "fastest", 2) == ["fast"] * 2
    fast.set(ttft_s=1.0)
    served = _served(gw, "fastest", 5)
    assert served[-2:] == ["medium", "medium"], served  # the next fastest, measured
    assert served.count("fast") <= 3, served


# ---- the example policies are valid ---------------------------------------------------------


def test_example_policies_load(monkeypatch):
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "examples"
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "EU1_KEY"):
        monkeypatch.setenv(var, "x")
    federation = yaml.safe_load((root / "federation.yaml").read_text())
    files = sorted((root / "policies").glob("*.yaml"))
    assert {f.stem for f in files} == set(PRESETS)
    for path in files:
        tenants = yaml.safe_load(path.read_text())["tenants"]
        config = parse_config({**federation, "tenants": tenants}, str(path))
        for tenant in config.tenants:
            spec = tenant.policy_spec()
            if isinstance(tenant.policy, str):
                assert spec == PRESETS[path.stem]
            elif tenant.name.endswith("-written-out"):
                assert spec.weights == PRESETS[path.stem].weights
