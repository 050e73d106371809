"""Benchmark fedrouter against the bare upstream and the Python floor (bench/pyfloor.py), all on
loopback, in one run, with the same number of workers for the floor and the gateway.

Usage: ``python bench/run.py [--quick] [--workers N] [--baseline TREE] [--out FILE]``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MODEL = "bench-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
STREAM = {**CHAT, "max_tokens": 4, "stream": True}
STREAM_BEHAVIOR = {"ttft_s": 0.020, "tokens_per_s": 200.0}  # the slow upstream of the streaming figure
#: The floor: the least a Python proxy can do (uvicorn + uvloop + httptools, an aiohttp client),
#: copied from the project's shared benchmark kit; run with the gateway's worker count.
FLOOR = "pyfloor"
SERVERS = (FLOOR, "fedrouter", "fedrouter_nowait", "baseline")  # targets whose CPU time is measured
# figure -> (label, limit, whether the limit is a ceiling); the targets in bench/README.md
GOALS: dict[str, tuple[str, float, bool]] = {
    "throughput_ratio": ("throughput c=64, fedrouter / pyfloor", 2 / 3, False),
    "added_p50_ms": ("added latency p50, c=1 (ms)", 1.0, True),
    "added_p99_ms": ("added latency p99, c=1 (ms)", 3.0, True),
    "added_ttfb_p50_ms": ("added stream TTFB p50 (ms)", 1.0, True),
    "rss_mb": ("gateway RSS after load (MB)", 150.0, True),
    "ready_s": ("start-up to /healthz, median of 3 (s)", 2.0, True),
    "durable_cost_p50_ms": ("durable recording's added latency p50, c=1 (ms)", 1.0, True),
}
ROWS = (
    ("rps_c64", "req/s, c=64", ".0f"),
    ("p50_ms", "latency p50, c=1 (ms)", ".3f"),
    ("p99_ms", "latency p99, c=1 (ms)", ".3f"),
    ("ttfb_p50_ms", "stream TTFB p50 (ms)", ".2f"),
    ("ttfb_p99_ms", "stream TTFB p99 (ms)", ".2f"),
    ("cpu_ms_per_req", "server CPU ms per request, c=64", ".3f"),
    ("failed", "failed requests", "d"),
)


@dataclass(frozen=True)
class Mode:
    load_s: int  # one wrk run at c=64
    latency_s: int  # one wrk run at c=1
    rounds: int  # repetitions of both, targets in rotating order
    stream_n: int  # sequential streaming requests per target


FULL = Mode(load_s=10, latency_s=5, rounds=3, stream_n=300)
QUICK = Mode(load_s=4, latency_s=2, rounds=1, stream_n=100)


class Processes:
    """Every subprocess the run starts, so that ``stop_all`` in a ``finally`` can end them."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs[:]):
            self.stop(proc)


@contextlib.contextmanager
def processes(prefix: str) -> Iterator[tuple[Processes, Path]]:
    """A temporary folder for a run's files and logs, and the processes started in it: all are
    stopped at the end, and on an error the tail of every log is printed first."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs = Processes(Path(tmp))
        try:
            yield procs, Path(tmp)
        except Exception:
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
        finally:
            procs.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before answering {path}")
        with contextlib.suppress(OSError), contextlib.closing(http.client.HTTPConnection(HOST, port, timeout=1)) as c:
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        time.sleep(0.005)
    raise RuntimeError(f"port {port} did not answer {path} within {timeout_s} s")


def start_gateway(
    procs: Processes,
    config: Path,
    ledger: str,
    *,
    workers: int = 1,
    durable: bool = True,
    keys_db: str | None = None,
    tree: Path | None = None,
    name: str = "fedrouter",
) -> tuple[subprocess.Popen[bytes], int, float]:
    """Spawn ``fedrouter serve`` and return it, its port and the seconds until /healthz answered.
    ``durable=False`` is the same gateway with responses not waiting for their ledger commit;
    ``tree`` runs the code of another checkout (``-P``: not the working directory's)."""
    port = free_port()
    began = time.perf_counter()
    env = {"FEDROUTER_LEDGER_DURABLE": "true" if durable else "false"}
    if keys_db:
        env["FEDROUTER_KEYS_DB"] = keys_db
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    serve = ["serve", "--config", str(config), "--host", HOST, "--port", str(port), "--workers", str(workers)]
    cmd = [sys.executable, "-P", "-c", "from router.cli import main; main()", *serve, "--ledger", ledger]
    proc = procs.spawn(name, *cmd, env=env)
    wait_ready(port, "/healthz", proc)
    return proc, port, time.perf_counter() - began


def start_floor(procs: Processes, upstream: str, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    """bench/pyfloor.py under uvicorn, as its README says to run it, with the gateway's worker count."""
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "pyfloor:app", "--app-dir", str(BENCH), "--loop", "uvloop"]
    opts = ["--http", "httptools", "--no-access-log", "--log-level", "warning", "--workers", str(workers)]
    proc = procs.spawn(FLOOR, *uvicorn, *opts, "--host", HOST, "--port", str(port), env={"UPSTREAM": upstream})
    wait_ready(port, "/v1/models", proc)
    return proc, port


def create_key(config: Path, ledger: str) -> str:
    out = subprocess.run(
        ["fedrouter", "keys", "create", "--tenant", "bench", "--config", str(config), "--ledger", ledger],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


def wrk(url: str, key: str, threads: int, conns: int, seconds: int) -> dict[str, Any]:
    """One wrk run of bench/post.lua; its done() hook prints the figures as one JSON line."""
    env = {**os.environ, "WRK_BODY": json.dumps(CHAT), "WRK_KEY": key}
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(BENCH / "post.lua"), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    result: dict[str, Any] = json.loads(next(ln for ln in out.splitlines() if ln.startswith("BENCH "))[6:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def rotated(targets: tuple[str, ...], i: int) -> tuple[str, ...]:
    """The targets in the order of round ``i``, so that none is always first or last."""
    k = i % len(targets)
    return targets[k:] + targets[:k]


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and every live descendant (the workers of a server)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    family, total = {pid}, 0.0
    for _ in range(4):  # parent, workers, and what the workers start
        family |= {p for p, (ppid, _) in stats.items() if ppid in family}
    for p in family:
        total += stats.get(p, (0, 0.0))[1]
    return total


def load_rounds(
    urls: dict[str, str], key: str, mode: Mode, pids: dict[str, int]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    targets = tuple(urls)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"c64": {t: [] for t in targets}, "c1": {t: [] for t in targets}}
    for target in targets:  # warm-up: connection pools, caches, the ledger's first writes
        wrk(urls[target], key, 2, 64, 2)
        wrk(urls[target], key, 1, 1, 1)
    for i in range(mode.rounds):
        for target in rotated(targets, i):
            before = cpu_s(pids[target]) if target in pids else 0.0
            result = wrk(urls[target], key, 2, 64, mode.load_s)
            if target in pids:  # CPU of the server alone, not of wrk or the upstream
                result["cpu_ms_per_req"] = (cpu_s(pids[target]) - before) * 1000 / max(1, result["requests"])
            runs["c64"][target].append(result)
        for target in rotated(targets, i + 1):
            runs["c1"][target].append(wrk(urls[target], key, 1, 1, mode.latency_s))
        print(f"  round {i + 1}/{mode.rounds} done", file=sys.stderr)
    return runs


async def first_byte_s(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Seconds from sending a streaming request to the first SSE ``data:`` bytes; the rest is drained."""
    began = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        response.raise_for_status()
        head = b""
        while b"data:" not in head:
            chunk = await response.content.readany()
            if not chunk:
                raise RuntimeError(f"{url}: the stream ended before any data")
            head += chunk
        elapsed = time.perf_counter() - began
        await response.read()
    return elapsed


async def ttfb_samples(urls: dict[str, str], key: str, n: int, warmup: int = 10) -> dict[str, list[float]]:
    """Interleaved sequential streaming requests, one keep-alive connection per target."""
    targets = tuple(urls)
    samples: dict[str, list[float]] = {t: [] for t in targets}
    body = json.dumps(STREAM).encode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for i in range(warmup + n):
            for target in rotated(targets, i):
                elapsed = await first_byte_s(session, urls[target], body)
                if i >= warmup:
                    samples[target].append(elapsed)
    return samples


def post(port: int, path: str, body: dict[str, Any], key: str = "") -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    with contextlib.closing(http.client.HTTPConnection(HOST, port, timeout=10)) as conn:
        conn.request("POST", path, json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, response.read()


def check_targets(ports: dict[str, int], key: str) -> None:
    """One request to each target before any load: a broken target fails the run here, not in the figures."""
    for target, port in ports.items():
        status, body = post(port, "/v1/chat/completions", CHAT, key)
        if status != 200:
            raise RuntimeError(f"{target} answered {status}: {body[:300]!r}")


def rss_mb(pid: int) -> float:
    with contextlib.suppress(ImportError):
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:"))) / 1024


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]], ttfb: dict[str, list[float]]) -> dict[str, Any]:
    """Per target: medians over the rounds (wrk) and percentiles over all samples (streaming), in req/s and ms."""
    per: dict[str, dict[str, Any]] = {}
    for t in runs["c64"]:
        c64, c1 = runs["c64"][t], runs["c1"][t]
        quantiles = statistics.quantiles(ttfb[t], n=100, method="inclusive")
        per[t] = {
            "rps_c64": statistics.median(r["rps"] for r in c64),
            "p50_ms": statistics.median(r["p50_us"] for r in c1) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in c1) / 1000,
            "ttfb_p50_ms": quantiles[49] * 1000,
            "ttfb_p99_ms": quantiles[98] * 1000,
            "c1_requests": [r["requests"] for r in c1],
            "cpu_ms_per_req": statistics.median(r.get("cpu_ms_per_req", float("nan")) for r in c64),
            "failed": sum(r["non2xx"] + r["errors"] for r in c64 + c1),
        }
    return per


LABELS = {
    "direct": "direct",
    FLOOR: "pyfloor (the floor)",
    "fedrouter": "fedrouter",
    "fedrouter_nowait": "fedrouter, ledger not awaited",
    "baseline": "fedrouter at --baseline",
}


def table(per: dict[str, dict[str, Any]], goals: dict[str, float]) -> str:
    targets = tuple(per)
    rows = ["| figure | " + " | ".join(LABELS[t] for t in targets) + " |", "|---|" + "---:|" * len(targets)]
    rows += [f"| {label} | " + " | ".join(format(per[t][key], fmt) for t in targets) + " |" for key, label, fmt in ROWS]
    rows += ["", "| target | fedrouter | goal | met |", "|---|---:|---:|:---:|"]
    for key, value in goals.items():
        label, limit, ceiling = GOALS[key]
        met = value <= limit if ceiling else value >= limit
        rows.append(f"| {label} | {value:.3f} | {'≤' if ceiling else '≥'} {limit:.3g} | {'yes' if met else 'NO'} |")
    return "\n".join(rows)


def run(mode: Mode, procs: Processes, tmp: Path, workers: int, baseline: Path | None) -> dict[str, Any]:
    sim_port = free_port()
    sim = procs.spawn(
        "sim",
        sys.executable,
        "-m",
        "router.sim",
        "--host",
        HOST,
        "--port",
        str(sim_port),
        "--name",
        "bench",
        "--model",
        MODEL,
    )
    wait_ready(sim_port, "/v1/models", sim)
    config, ledger = tmp / "bench.yaml", f"sqlite:///{tmp / 'ledger.db'}"
    config.write_text(
        json.dumps(
            {  # JSON is YAML
                "backends": [
                    {
                        "name": "up",
                        "class": "datacenter",
                        "type": "openai",
                        "base_url": f"http://{HOST}:{sim_port}/v1",
                        "models": [MODEL],
                        "price": {"input": 0.1, "output": 0.2},
                        "energy": {"joules_per_token": 0.5},
                    }
                ],
                "tenants": [{"name": "bench", "policy": "balanced"}],
            }
        )
    )
    key = create_key(config, ledger)
    ready_s: list[float] = []
    for _ in range(3):  # the third gateway stays up for the measurements
        gateway, gateway_port, seconds = start_gateway(procs, config, ledger, workers=workers)
        ready_s.append(seconds)
        if len(ready_s) < 3:
            procs.stop(gateway)
    floor, floor_port = start_floor(procs, f"http://{HOST}:{sim_port}", workers)
    # Its own ledger file, the same keys: the two gateways must not share one SQLite writer.
    nowait, nowait_port, _ = start_gateway(
        procs,
        config,
        f"sqlite:///{tmp / 'ledger-nowait.db'}",
        workers=workers,
        durable=False,
        keys_db=str(tmp / "ledger.db"),
        name="fedrouter_nowait",
    )
    ports = {"direct": sim_port, FLOOR: floor_port, "fedrouter": gateway_port, "fedrouter_nowait": nowait_port}
    pids = {FLOOR: floor.pid, "fedrouter": gateway.pid, "fedrouter_nowait": nowait.pid}
    if baseline is not None:
        base, ports["baseline"], _ = start_gateway(
            procs,
            config,
            f"sqlite:///{tmp / 'ledger-base.db'}",
            workers=workers,
            keys_db=str(tmp / "ledger.db"),
            tree=baseline,
            name="baseline",
        )
        pids["baseline"] = base.pid
    urls = {t: f"http://{HOST}:{p}/v1/chat/completions" for t, p in ports.items()}
    check_targets(ports, key)

    print("non-streaming load (c=64) and latency (c=1) ...", file=sys.stderr)
    runs = load_rounds(urls, key, mode, pids)
    print(f"streaming TTFB, {mode.stream_n} requests per target ...", file=sys.stderr)
    if post(sim_port, "/_sim/behavior", STREAM_BEHAVIOR)[0] != 200:
        raise RuntimeError(f"the sim refused {STREAM_BEHAVIOR}")
    ttfb = asyncio.run(ttfb_samples(urls, key, mode.stream_n))
    per = summarise(runs, ttfb)
    d, m, f, nowait_fig = per["direct"], per[FLOOR], per["fedrouter"], per["fedrouter_nowait"]
    goals = {
        "throughput_ratio": f["rps_c64"] / m["rps_c64"],
        "added_p50_ms": f["p50_ms"] - d["p50_ms"],
        "added_p99_ms": f["p99_ms"] - d["p99_ms"],
        "added_ttfb_p50_ms": f["ttfb_p50_ms"] - d["ttfb_p50_ms"],
        "rss_mb": rss_mb(gateway.pid),
        "ready_s": statistics.median(ready_s),
        "durable_cost_p50_ms": f["p50_ms"] - nowait_fig["p50_ms"],
    }
    return {
        "mode": mode.__dict__,
        "floor": "bench/pyfloor.py under uvicorn (uvloop, httptools), aiohttp client",
        "workers": workers,
        "baseline": str(baseline) if baseline else None,
        "targets": per,
        "goals": goals,
        "ready_s_samples": ready_s,
        "stream_request": STREAM,
        "stream_behavior": STREAM_BEHAVIOR,
        "chat_request": CHAT,
        "raw": runs,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }  # others' work on the machine skews every figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument("--workers", type=int, default=1, help="workers of the gateway and of the floor alike")
    parser.add_argument("--baseline", type=Path, help="another checkout of fedrouter, measured in the same run")
    args = parser.parse_args()
    with processes("fedrouter-bench-") as (procs, tmp):
        result = run(QUICK if args.quick else FULL, procs, tmp, args.workers, args.baseline)
    print(f"floor: {result['floor']}; workers: {args.workers}")
    print(table(result["targets"], result["goals"]))
    if any(t["failed"] for t in result["targets"].values()):
        print("\nWARNING: some requests failed (see 'failed requests'); the figures are not comparable.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
