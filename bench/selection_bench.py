"""Backend selection cost: Planner.plan (filter, score, order) at 10 to 10,000 registered backends.

Two cases per size: *realistic*, where the backends are spread over many models and the
benchmarked model has at most 50 of them, and *worst*, where (almost) every backend serves it.
Every backend has live measurements, a declared price and energy, and a grid zone; the tenant
uses the balanced preset (all six scorers) and may use every class. Run:

    python bench/selection_bench.py            # prints a markdown table
    python bench/selection_bench.py --quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from policies.base import RequestShape
from policies.presets import PRESETS
from providers.base import BackendInfo
from router.backend_stats import EjectionPolicy, StatsBook
from router.config import RoutingConfig
from router.routing import Planner, Tenant
from router.state.memory import MemoryStore

CLASSES = ("datacenter", "sovereign", "volunteer")
ZONES = ("FR", "DE", "US", "SE", "PL", "ES", "IT", "NL")
PER_MODEL = 50
SHAPE = RequestShape(200, 256)


def federation(n: int, worst: bool, rng: random.Random) -> tuple[list[BackendInfo], dict[str, list[str]]]:
    """``n`` backends; model ``m0`` is served by all of them (worst) or by at most 50."""
    models = max(1, n // PER_MODEL)
    infos, groups = [], {}
    for i in range(n):
        served = {f"m{i % models}"} | ({"m0"} if worst else set())
        name = f"b{i}"
        infos.append(BackendInfo(
            name, CLASSES[i % 3], "openai", {m: m for m in served}, zone=ZONES[i % len(ZONES)],
            prices={m: (rng.uniform(0, 5), rng.uniform(0, 15)) for m in served},
            joules_per_token=rng.uniform(0.1, 2.0), max_concurrency=64,
        ))
        for m in served:
            groups.setdefault(m, []).append(name)
    return infos, groups


def build(n: int, worst: bool) -> tuple[Planner, Tenant, int]:
    rng = random.Random(n)
    infos, groups = federation(n, worst, rng)
    stats = StatsBook(MemoryStore(), EjectionPolicy.of(RoutingConfig()), groups)
    for info in infos:
        for m in info.models:
            stats.success(info.name, m, rng.uniform(0.05, 1.0), 64, rng.uniform(0.1, 2.0))
    planner = Planner(infos, stats, exploration=0.05, rng=random.Random(1))
    tenant = Tenant("bench", PRESETS["balanced"], allow_volunteer=True)
    return planner, tenant, len(groups["m0"])


def measure(planner: Planner, tenant: Tenant, budget_s: float) -> tuple[float, float]:
    """Median and p99 CPU microseconds of one plan (process time, so that other load on the
    machine does not count), over batches filling about ``budget_s``."""
    planner.plan("m0", tenant, SHAPE)  # warm the caches
    start = time.perf_counter()
    planner.plan("m0", tenant, SHAPE)
    one = time.perf_counter() - start
    batch = max(1, int(0.01 / max(one, 1e-7)))
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(samples) < 5:
        t0 = time.process_time_ns()
        for _ in range(batch):
            planner.plan("m0", tenant, SHAPE)
        samples.append((time.process_time_ns() - t0) / batch / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    budget = 0.3 if args.quick else 2.0
    print("| registered backends | case | candidates for the model | median µs | p99 µs (per batch) |")
    print("|---:|---|---:|---:|---:|")
    for n in (10, 100, 1_000, 10_000):
        for worst in (False, True):
            planner, tenant, candidates = build(n, worst)
            median, p99 = measure(planner, tenant, budget)
            case = "worst (all serve it)" if worst else f"realistic (<= {PER_MODEL} per model)"
            print(f"| {n:,} | {case} | {candidates:,} | {median:,.1f} | {p99:,.1f} |")


if __name__ == "__main__":
    main()
