"""Backend selection cost: Planner.plan (filter, score, order) at 10 to 10,000 registered backends.

Three cases per size: *small*, where the backends are spread over many models and the
benchmarked model has 4 of them (the common deployment), *realistic*, where it has at most 50,
and *worst*, where every backend serves it. Every backend has live measurements, a declared
price and energy, and a grid zone; the tenant uses the balanced preset (all six scorers) and may
use every class. Run:

    python bench/selection_bench.py            # prints a markdown table
    python bench/selection_bench.py --quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from policies.base import RequestShape
from policies.presets import PRESETS
from providers.base import BackendInfo
from router.config import RoutingConfig
from router.fleet.backend_stats import EjectionPolicy, StatsBook
from router.pipeline.metering import decision_json
from router.pipeline.planner import Planner
from router.state.memory import MemoryStore
from router.tenancy.tenants import Tenant

CLASSES = ("datacenter", "sovereign", "volunteer")
ZONES = ("FR", "DE", "US", "SE", "PL", "ES", "IT", "NL")
PER_MODEL = 50
SMALL = 4
SHAPE = RequestShape(200, 256)


def federation(n: int, per_model: int | None, rng: random.Random) -> tuple[list[BackendInfo], dict[str, list[str]]]:
    """``n`` backends; model ``m0`` is served by at most ``per_model`` of them, or all (None)."""
    models = max(1, n // (per_model or n))
    infos, groups = [], {}
    for i in range(n):
        served = {f"m{i % models}"}
        name = f"b{i}"
        infos.append(
            BackendInfo(
                name,
                CLASSES[i % 3],
                "openai",
                {m: m for m in served},
                zone=ZONES[i % len(ZONES)],
                prices={m: (rng.uniform(0, 5), rng.uniform(0, 15)) for m in served},
                joules_per_token=rng.uniform(0.1, 2.0),
                max_concurrency=64,
            )
        )
        for m in served:
            groups.setdefault(m, []).append(name)
    return infos, groups


class Clock:
    """The planner's clock, moved forward to make it rebuild a ranking."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def build(n: int, per_model: int | None) -> tuple[Planner, Tenant, int, Clock]:
    rng = random.Random(n)
    infos, groups = federation(n, per_model, rng)
    stats = StatsBook(MemoryStore(), EjectionPolicy.of(RoutingConfig()), groups)
    for info in infos:
        for m in info.models:
            stats.success(info.name, m, rng.uniform(0.05, 1.0), 64, rng.uniform(0.1, 2.0))
    clock = Clock()
    planner = Planner(infos, stats, exploration=0.05, rng=random.Random(1), clock=clock)
    tenant = Tenant("bench", PRESETS["balanced"], allow_volunteer=True)
    return planner, tenant, len(groups["m0"]), clock


def measure(work: Callable[[], object], budget_s: float) -> tuple[float, float]:
    """Median and p99 CPU microseconds of one call (process time, so that other load on the
    machine does not count), over batches filling about ``budget_s``."""
    work()  # warm the caches
    start = time.perf_counter()
    work()
    one = time.perf_counter() - start
    batch = max(1, int(0.01 / max(one, 1e-7)))
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(samples) < 5:
        t0 = time.process_time_ns()
        for _ in range(batch):
            work()
        samples.append((time.process_time_ns() - t0) / batch / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def rebuild_ms(planner: Planner, tenant: Tenant, clock: Clock) -> float:
    """CPU milliseconds of a plan that rebuilds the model's ranking (a large group's, at most
    every max(1 s, 100 rebuilds); a small group has none, and this is a plain plan)."""
    planner.plan("m0", tenant, SHAPE)
    clock.now += 3600.0
    t0 = time.process_time_ns()
    planner.plan("m0", tenant, SHAPE)
    return (time.process_time_ns() - t0) / 1e6


def row(n: int, case: str, per_model: int | None, budget: float) -> str:
    planner, tenant, candidates, clock = build(n, per_model)
    median, p99 = measure(lambda: planner.plan("m0", tenant, SHAPE), budget)
    # What the gateway does with every plan: the ledger's record reads every candidate's parts.
    recorded, _ = measure(lambda: decision_json(planner.plan("m0", tenant, SHAPE)), budget)
    rebuild = rebuild_ms(planner, tenant, clock)
    return f"| {n:,} | {case} | {candidates:,} | {median:,.1f} | {p99:,.1f} | {recorded:,.1f} | {rebuild:,.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    budget = 0.3 if args.quick else 2.0
    print(
        "| registered backends | case | candidates for the model | median µs | p99 µs (per batch) "
        "| median µs with the decision record | plan that rebuilds the ranking, ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    cases = {"small": SMALL, "realistic": PER_MODEL, "worst (all serve it)": None}
    for n in (10, 100, 1_000, 10_000):
        for case, per_model in cases.items():
            print(row(n, case, per_model, budget))


if __name__ == "__main__":
    main()
