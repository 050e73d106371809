"""Selection: the fused scoring is the per-scorer reference bit for bit, so a group of at most K
is planned exactly as before; in a larger group the planner considers the best K of a ranking of
the group, never breaks a hard constraint, explores, honours requests that name backends, and
records what it did not examine."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import filters, pickers, selection
from policies.base import MaxPrice, PolicySpec, RequestShape, Scored, Weights
from policies.presets import PRESETS
from policies.scorers import SCORERS, normalise
from providers.base import BackendInfo
from router.config import RoutingConfig
from router.errors import ModelNotFound, NoBackendAvailable
from router.fleet.backend_stats import EjectionPolicy, StatsBook
from router.pipeline.overrides import Override
from router.pipeline.planner import Planner
from router.state.memory import MemoryStore
from router.tenancy.tenants import Tenant
from tests.conftest import backend_entry
from tests.policies.test_policies import ALL, REQ, _constraints, _requests, _weights, cand

# ---- the fused scoring is the per-scorer reference, bit for bit ----------------------------


def reference_score(candidates, req, weights):
    """The straightforward scoring the fused one replaced: every weighted scorer called per
    candidate, each column normalised, the weighted columns summed, a stable sort."""
    if not candidates:
        return []
    active = weights.active()
    total = sum(w for _, w in active)
    columns = [(name, normalise([SCORERS[name](c, req) for c in candidates])) for name, _ in active]
    sums = [0.0] * len(candidates)
    for (_, col), (_, w) in zip(columns, active, strict=True):
        share = w / total
        sums = [acc + share * v for acc, v in zip(sums, col, strict=True)]
    scored = [
        Scored(c, value, {name: col[i] for name, col in columns})
        for i, (c, value) in enumerate(zip(candidates, sums, strict=True))
    ]
    return sorted(scored, key=lambda s: -s.score)


def _ranked(scored):
    return [(s.candidate.info.name, s.score, s.parts) for s in scored]


# Few distinct values, so that ties and all-equal columns are common.
_some = st.sampled_from
_varied = st.lists(
    st.builds(
        lambda i, cls, zone, price, energy, intensity, trust, ctx, caps, conc, ttft, tps, inflight, err, ej: cand(
            f"b{i}",
            cls,
            zone,
            price,
            energy,
            intensity,
            trust,
            ctx,
            caps,
            conc,
            ttft_s=ttft,
            tokens_per_s=tps,
            inflight=inflight,
            error_rate=err,
            ejected=ej,
        ),
        st.integers(0, 10**6),
        _some(sorted(ALL)),
        _some([None, "FR", "US"]),
        st.one_of(_some([None, (1.0, 2.0), (0.0, 0.0), (0.5, 4.0)]), st.tuples(st.floats(0, 20), st.floats(0, 40))),
        st.one_of(
            _some([None, (0.5, 0.5, "declared"), (0.0, 0.3, "derived")]),
            st.tuples(st.floats(0, 2), st.floats(0, 2), st.just("measured")),
        ),
        st.one_of(_some([None, 100.0, 0.0]), st.floats(0, 900)),
        st.one_of(st.none(), st.floats(0, 1)),
        st.one_of(st.none(), st.integers(1, 4000)),
        st.one_of(st.none(), st.frozensets(st.sampled_from(["tools", "json_mode", "vision"]))),
        _some([None, 1, 4, 16]),
        st.one_of(_some([None, 0.0, 0.2]), st.floats(0, 5)),
        st.one_of(_some([None, 0.0, 50.0]), st.floats(0.01, 2000)),
        st.integers(0, 6),  # 1/tps stays finite
        st.one_of(_some([0.0, 0.5]), st.floats(0, 1)),
        st.booleans(),
    ),
    max_size=16,
    unique_by=lambda c: c.info.name,
)


@settings(max_examples=400, deadline=None)
@given(_varied, _requests, _weights)
def test_fused_scoring_is_the_reference_bit_for_bit(candidates, req, weights):
    assert _ranked(pickers.score(candidates, req, weights)) == _ranked(reference_score(candidates, req, weights))


@settings(max_examples=300, deadline=None)
@given(_varied, _constraints, _requests, _weights)
def test_a_small_group_is_filtered_and_ranked_as_the_reference(candidates, cons, req, weights):
    stats = {c.info.name: c.stats for c in candidates}
    group = selection.build([c.profile for c in candidates], [c.info.name for c in candidates], cons, 16)
    got = selection.admit(group, range(len(group.profiles)), cons, req, stats.__getitem__, lambda p, s: p.energy)
    kept, rejected = filters.split(candidates, cons, req)
    assert {**group.rejected, **got.busy} == rejected
    assert [c.info.name for c in got.candidates] == [c.info.name for c in kept]
    assert _ranked(pickers.score(got.candidates, req, weights)) == _ranked(reference_score(kept, req, weights))


def test_parts_are_normalised_on_read():
    a, b, c = (cand(n, price=p, ttft_s=0.1) for n, p in (("a", (1.0, 1.0)), ("b", None), ("c", (3.0, 3.0))))
    scored = pickers.score([a, b, c], REQ, Weights(price=1.0, latency=1.0))
    assert _ranked(scored) == [
        ("a", 1.0, {"latency": 1.0, "price": 1.0}),  # equal latencies: every one scores 1
        ("b", 0.5, {"latency": 1.0, "price": 0.0}),  # an unknown price: as the worst known; ties stay in order
        ("c", 0.5, {"latency": 1.0, "price": 0.0}),
    ]
    alone = pickers.score([b], REQ, Weights(price=1.0))
    assert _ranked(alone) == [("b", 1.0, {"price": 1.0})]  # nothing known to compare with


# ---- the planner ----------------------------------------------------------------------------

SHAPE = RequestShape(200, 100)
CHEAPEST = PolicySpec(weights=Weights(price=1.0))


class Clock:
    """The planner's and the stats book's time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def federation(
    n: int, *, k: int = 4, exploration: float = 0.0, classes=("datacenter",), conc=None, seed=0, unmeasured=()
):
    """``n`` backends of model ``m``; backend ``b{i}`` is dearer the smaller ``i`` (the cheapest
    come last in the config, so that finding them is not a matter of reading the first K)."""
    rng = random.Random(seed)
    infos = [
        BackendInfo(
            f"b{i}",
            classes[i % len(classes)],
            "openai",
            {"m": "m"},
            zone="FR",
            prices={"m": (float(n - i), 2.0 * (n - i))},
            joules_per_token=rng.uniform(0.1, 2),
            max_concurrency=conc,
        )
        for i in range(n)
    ]
    clock = Clock()
    stats = StatsBook(MemoryStore(), EjectionPolicy.of(RoutingConfig()), {"m": [i.name for i in infos]}, clock=clock)
    for info in infos:
        if info.name not in unmeasured:
            measure(stats, info.name, ttft_s=0.5)
    planner = Planner(infos, stats, exploration, random.Random(seed), consider=k, clock=clock)
    return planner, stats, clock


def measure(stats: StatsBook, name: str, ttft_s: float, times: int = 1) -> None:
    for _ in range(times):
        stats.success(name, "m", ttft_s, 100, 1.0)


def names(plan) -> list[str]:
    return [s.candidate.info.name for s in plan.order]


def tenant(policy: PolicySpec = CHEAPEST, volunteers: bool = True) -> Tenant:
    return Tenant("t", policy, allow_volunteer=volunteers)


def test_a_group_of_at_most_k_is_planned_as_the_reference():
    planner, stats, _ = federation(6, k=6)
    measure(stats, "b2", ttft_s=0.05, times=5)
    for policy in (PRESETS["balanced"], PRESETS["fastest"], CHEAPEST):
        plan = planner.plan("m", tenant(policy), SHAPE)
        in_config = sorted((s.candidate for s in plan.order), key=lambda c: int(c.info.name[1:]))
        reference = reference_score(in_config, SHAPE, policy.weights)
        assert [(s.candidate.info.name, s.score, s.parts) for s in plan.order] == [
            (s.candidate.info.name, s.score, s.parts) for s in reference
        ]
        assert plan.rejected == {}


def test_a_large_group_considers_the_best_k_of_its_ranking():
    planner, _, _ = federation(40, k=4)
    plan = planner.plan("m", tenant(), SHAPE)
    assert names(plan) == ["b39", "b38", "b37", "b36"]
    assert plan.rejected == {"(not examined)": "36 backends ranked below those considered"}
    assert [s.parts["price"] for s in plan.order] == pytest.approx([1, 2 / 3, 1 / 3, 0])  # across the four


def test_a_latency_policy_finds_the_fastest_anywhere_and_follows_it_at_the_next_ranking():
    planner, stats, clock = federation(40, k=4)
    fastest = tenant(PRESETS["fastest"])
    measure(stats, "b17", ttft_s=0.01, times=5)
    assert names(planner.plan("m", fastest, SHAPE))[0] == "b17"
    measure(stats, "b17", ttft_s=3.0, times=10)  # b17 slows down: scored live, it drops at once
    measure(stats, "b30", ttft_s=0.01, times=10)  # b30 speeds up, outside the four considered
    assert names(planner.plan("m", fastest, SHAPE))[0] not in ("b17", "b30")
    clock.now += 1.0  # the ranking is rebuilt
    assert names(planner.plan("m", fastest, SHAPE))[0] == "b30"


def test_busy_backends_are_passed_over_and_named():
    planner, stats, _ = federation(40, k=4, conc=1)
    stats.started("b39", "m")
    stats.started("b37", "m")
    plan = planner.plan("m", tenant(), SHAPE)
    assert names(plan) == ["b38", "b36", "b35", "b34"]
    assert plan.rejected == {
        "b39": "at its concurrency limit",
        "b37": "at its concurrency limit",
        "(not examined)": "34 backends ranked below those considered",
    }


@pytest.mark.asyncio
async def test_an_ejected_backend_is_passed_over():
    planner, stats, _ = federation(40, k=4)
    for _ in range(3):
        await stats.failure("b39", "m")
    plan = planner.plan("m", tenant(), SHAPE)
    assert names(plan) == ["b38", "b37", "b36", "b35"]
    assert plan.rejected["b39"] == "ejected after failures"


def test_exploration_brings_in_the_best_unmeasured_backend():
    planner, _, _ = federation(40, k=4, exploration=1.0, unmeasured={"b20"})  # every plan explores
    plan = planner.plan("m", tenant(), SHAPE)
    assert names(plan) == ["b20", "b39", "b38", "b37", "b36"]  # the explorer first, then the four best
    planner, _, _ = federation(40, k=4, exploration=0.0, unmeasured={"b20"})
    assert "b20" not in names(planner.plan("m", tenant(), SHAPE))


def test_requests_that_name_backends_in_a_large_group():
    planner, _, _ = federation(40, k=4)
    t = tenant()
    assert names(planner.plan("m", t, SHAPE, Override(order=("b0",))))[:2] == ["b0", "b39"]  # named, dearest
    plan = planner.plan("m", t, SHAPE, Override(ignore=frozenset({"b39", "b38"})))
    assert names(plan) == ["b37", "b36", "b35", "b34"]
    assert plan.rejected["b39"] == plan.rejected["b38"] == "in provider.ignore"
    plan = planner.plan("m", t, SHAPE, Override(only=frozenset({"b1", "b2"})))
    assert names(plan) == ["b2", "b1"]
    assert plan.rejected == {"(not in provider.only)": "38 backends"}
    assert names(planner.plan("m", t, SHAPE, Override(sort="price"))) == [f"b{i}" for i in range(39, -1, -1)]


def test_the_dry_run_lists_every_backend_and_the_record_counts_the_rest():
    planner, _, _ = federation(40, k=4, classes=("datacenter", "volunteer"))
    no_volunteers = tenant(volunteers=False)
    plan = planner.plan("m", no_volunteers, SHAPE)
    assert names(plan) == ["b38", "b36", "b34", "b32"]
    assert len(plan.rejected) == 4 + 2  # four volunteers named, a count of the others, not examined
    assert plan.rejected["(not listed)"] == "16 more filtered out by the tenant's policy"
    assert plan.rejected["(not examined)"] == "16 backends ranked below those considered"
    explained = planner.explain("m", no_volunteers, SHAPE)["models"][0]
    assert [c["backend"] for c in explained["candidates"]] == [f"b{i}" for i in range(38, -1, -2)]
    assert {f["backend"] for f in explained["filtered"]} == {f"b{i}" for i in range(1, 40, 2)}


_policies = st.builds(
    PolicySpec,
    weights=st.fixed_dictionaries({k: st.floats(0, 10) for k in ("latency", "price", "energy", "trust")})
    .filter(lambda w: sum(w.values()) > 0)
    .map(lambda w: Weights(**w)),
    max_price=st.one_of(st.none(), st.builds(MaxPrice, completion=st.floats(0, 80))),
    max_carbon_g=st.one_of(st.none(), st.floats(0.001, 1.0)),
    min_trust=st.one_of(st.none(), st.floats(0, 1)),
)


@settings(max_examples=40, deadline=None)
@given(_policies, st.integers(0, 10**6), st.integers(0, 2000), st.integers(0, 2000))
def test_a_large_group_never_breaks_a_hard_constraint(policy, seed, prompt, output):
    planner, stats, _ = federation(30, k=4, classes=("datacenter", "volunteer", "sovereign"), conc=2, seed=seed)
    rng = random.Random(seed)
    for i in rng.sample(range(30), 10):
        stats.started(f"b{i}", "m")
        stats.started(f"b{i}", "m")  # at its limit
    shape = RequestShape(prompt, output)
    cons = filters.constraints(policy, True)
    try:
        plan = planner.plan("m", tenant(policy), shape)
    except (ModelNotFound, NoBackendAvailable):  # refused only when nothing is admissible
        assert planner.explain("m", tenant(policy), shape)["models"][0]["candidates"] == []
        return
    assert 1 <= len(plan.order) <= 4
    for s in plan.order:
        assert filters.admissible(s.candidate, cons, shape) is None
        assert 0.0 <= s.score <= 1.0 + 1e-9


def test_routing_consider_sets_how_many_backends_of_a_large_group_are_scored(start_sim_backend, start_gateway):
    sim = start_sim_backend("one-sim")  # twelve backends in the config, all served by one simulator
    gw = start_gateway(
        [backend_entry(sim, name=f"b{i:02d}", price={"input": i, "output": i}) for i in range(12)],
        routing={"consider": 5, "exploration": 0.0},
    )
    reply = gw.client().chat.completions.with_raw_response.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.headers["x-fedrouter-backend"] == "b00"  # the cheapest, under a balanced policy
    rows = [r for r in gw.usage("acme")["recent"] if r["request_id"] == reply.headers["x-request-id"]]
    decision = orjson.loads(rows[0]["decision"])  # as stored: JSON text
    assert len(decision["candidates"]) == 5
    assert decision["rejected"] == {"(not examined)": "7 backends ranked below those considered"}
