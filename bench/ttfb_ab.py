"""Streaming time to first byte of two versions of fedrouter side by side, in one run.

Usage: ``git worktree add --detach /tmp/fedrouter-old REF`` then
``python bench/ttfb_ab.py --old /tmp/fedrouter-old [--new .] [-n 600]``.

The sim (20 ms to the first token, as in ``run.py``), the minimal proxy, a byte-for-byte TCP
relay (``tcp_relay.py``: the floor of any proxy) and a gateway from each source tree are measured
with requests interleaved one by one over one keep-alive connection each, so that the machine's
drift, which moves ``run.py``'s figures by ±20 % between runs, moves every target alike. Each
gateway runs its own tree's code (``PYTHONPATH``) with the same config and keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import aiohttp
import run as bench  # bench/run.py: run as ``python bench/ttfb_ab.py``, its folder is on sys.path

ROOT = bench.BENCH.parent


def start_tree_gateway(procs: bench.Processes, tree: Path, name: str, config: Path, ledger: str, keys_db: str) -> int:
    where = subprocess.run(
        [sys.executable, "-P", "-c", "import router; print(router.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree):
        raise RuntimeError(f"the {name} gateway would import {where}, not the code in {tree}")
    port = bench.free_port()
    # -P: no working directory on sys.path ahead of PYTHONPATH, or both gateways would run the code there.
    proc = procs.spawn(
        name,
        sys.executable,
        "-P",
        "-c",
        "from router.cli import main; main()",
        "serve",
        "--config",
        str(config),
        "--host",
        bench.HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--ledger",
        ledger,
        env={"PYTHONPATH": str(tree), "FEDROUTER_KEYS_DB": keys_db},
    )
    bench.wait_ready(port, "/healthz", proc)
    return port


async def interleaved(urls: dict[str, str], key: str, n: int, warmup: int = 20) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {t: [] for t in urls}
    names = list(urls)
    body = json.dumps(bench.STREAM).encode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for i in range(warmup + n):
            k = i % len(names)
            for target in names[k:] + names[:k]:
                elapsed = await bench.first_byte_s(session, urls[target], body)
                if i >= warmup:
                    samples[target].append(elapsed)
    return samples


def measure(old: Path, new: Path, n: int, tmp: Path, procs: bench.Processes) -> dict[str, list[float]]:
    sim_port = bench.free_port()
    sim = procs.spawn(
        "sim",
        sys.executable,
        "-m",
        "router.sim",
        "--host",
        bench.HOST,
        "--port",
        str(sim_port),
        "--name",
        "bench",
        "--model",
        bench.MODEL,
    )
    bench.wait_ready(sim_port, "/v1/models", sim)
    config, keys_db = tmp / "bench.yaml", tmp / "keys.db"
    config.write_text(
        json.dumps(
            {
                "backends": [
                    {
                        "name": "up",
                        "class": "datacenter",
                        "type": "openai",
                        "base_url": f"http://{bench.HOST}:{sim_port}/v1",
                        "models": [bench.MODEL],
                        "price": {"input": 0.1, "output": 0.2},
                        "energy": {"joules_per_token": 0.5},
                    }
                ],
                "tenants": [{"name": "bench", "policy": "balanced"}],
            }
        )
    )
    key = bench.create_key(config, f"sqlite:///{keys_db}")
    ports = {"direct": sim_port}
    ports["minimal"] = bench.free_port()
    proxy = procs.spawn(
        "minimal",
        sys.executable,
        str(bench.BENCH / "minimal_proxy.py"),
        "--host",
        bench.HOST,
        "--port",
        str(ports["minimal"]),
        "--upstream",
        f"http://{bench.HOST}:{sim_port}",
    )
    bench.wait_ready(ports["minimal"], "/v1/models", proxy)
    ports["tcp_relay"] = bench.free_port()
    relay = procs.spawn(
        "tcp_relay",
        sys.executable,
        str(bench.BENCH / "tcp_relay.py"),
        "--host",
        bench.HOST,
        "--port",
        str(ports["tcp_relay"]),
        "--upstream-port",
        str(sim_port),
    )
    bench.wait_ready(ports["tcp_relay"], "/v1/models", relay)
    for name, tree in (("new", new), ("old", old)):  # each its own ledger: two SQLite writers must not share one
        ports[name] = start_tree_gateway(procs, tree, name, config, f"sqlite:///{tmp / f'{name}.db'}", str(keys_db))
    bench.check_targets(ports, key)
    if bench.post(sim_port, "/_sim/behavior", bench.STREAM_BEHAVIOR)[0] != 200:
        raise RuntimeError(f"the sim refused {bench.STREAM_BEHAVIOR}")
    urls = {t: f"http://{bench.HOST}:{p}/v1/chat/completions" for t, p in ports.items()}
    return asyncio.run(interleaved(urls, key, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="source tree of the version to compare against")
    parser.add_argument("--new", type=Path, default=ROOT, help="source tree of the version under test (this one)")
    parser.add_argument("-n", type=int, default=600, help="streams per target")
    args = parser.parse_args()
    for tree in (args.old, args.new):
        if not (tree / "router" / "cli.py").is_file():
            parser.error(f"{tree} is not a fedrouter source tree")
    with bench.processes("fedrouter-ab-") as (procs, tmp):
        samples = measure(args.old.resolve(), args.new.resolve(), args.n, tmp, procs)
    direct = statistics.median(samples["direct"])
    print("| target | TTFB p50 (ms) | added p50 (ms) | TTFB p90 (ms) |\n|---|---:|---:|---:|")
    for target, values in samples.items():
        q = statistics.quantiles(values, n=100, method="inclusive")
        print(f"| {target} | {q[49] * 1000:.3f} | {(q[49] - direct) * 1000:.3f} | {q[89] * 1000:.3f} |")


if __name__ == "__main__":
    main()
