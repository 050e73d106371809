"""`python -m router.sim`: run the simulated backend on its own (the benchmark's upstream)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal

from router.sim.backend import SimBackend, SimBehavior, start_sim


async def _serve(backend: SimBackend, host: str, port: int) -> None:
    runner, bound = await start_sim(backend, host, port)
    print(f"sim {backend.name} listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m router.sim", description="Run a simulated LLM backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="sim")
    parser.add_argument("--model", action="append", dest="models", help="a model id to list (repeatable)")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    parser.add_argument("--power-watts", type=float, default=None)
    args = parser.parse_args(argv)
    behavior = SimBehavior(ttft_s=args.ttft_ms / 1000, tokens_per_s=args.tokens_per_s, power_watts=args.power_watts)
    try:
        loop_factory = importlib.import_module("uvloop").new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(SimBackend(args.name, behavior, args.models), args.host, args.port))


if __name__ == "__main__":
    main()
