"""`fedrouter demo`: the gateway and simulated backends of every class, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from importlib import resources

import yaml

from router.app import create_app
from router.config import FederationConfig, parse_config
from router.http.server import Server
from router.http.workers import bind
from router.ledger import sqlite_path
from router.settings import Settings
from router.sim.backend import SimBackend, SimBehavior, start_sim
from router.tenancy.keys import KeyStore

# Latency and throughput of each demo backend: (time to first token in s, tokens per s).
_PROFILES = {
    "dc-fast": (0.03, 400.0),
    "eu-sovereign": (0.08, 150.0),
    "volunteer-berlin": (0.25, 40.0),
    "dc-budget": (0.15, 90.0),
}


def demo_config_text() -> str:
    return resources.files("router.cli").joinpath("demo.yaml").read_text()


def run_demo(host: str, port: int, ledger: str) -> int:
    raw = yaml.safe_load(demo_config_text())
    config = parse_config(raw, "demo.yaml")
    # Unset: a fresh key for this run. Set, it is held to serve's rule (Settings refuses a short one).
    given = os.environ.get("FEDROUTER_ADMIN_KEY")
    admin_key = "fr-admin-" + secrets.token_urlsafe(16) if given is None else given.strip()
    settings = Settings(ledger=ledger, admin_key=admin_key)
    store = KeyStore(sqlite_path(ledger))
    keys = {t.name: store.create(t.name)[0] for t in config.tenants}
    store.close()
    print(f"fedrouter demo: gateway on http://{host}:{port}/v1, backends on 127.0.0.1:18101-18104")
    print(f"  admin key (dashboard http://{host}:{port}/admin): {admin_key}")
    for tenant, key in keys.items():
        policy = next(t.policy for t in config.tenants if t.name == tenant)
        print(f"  tenant {tenant:<7} policy {policy!s:<15} key {key}")
    print(f"\n  curl http://{host}:{port}/v1/chat/completions -H 'Authorization: Bearer {keys['demo']}' \\")
    print("    -H 'Content-Type: application/json' \\")
    body = '{"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "Hi"}]}'
    print(f"    -d '{body}' -i")
    asyncio.run(_serve(config, settings, host, port))
    return 0


async def _serve(config: FederationConfig, settings: Settings, host: str, port: int) -> None:
    runners = []
    for backend in config.backends:
        ttft, tps = _PROFILES[backend.name]
        sim_port = int((backend.base_url or "").rsplit(":", 1)[1].split("/")[0])
        sim = SimBackend(backend.name, SimBehavior(ttft_s=ttft, tokens_per_s=tps), list(backend.model_map().values()))
        runners.append((await start_sim(sim, "127.0.0.1", sim_port))[0])
    try:
        await Server(create_app(config, settings)).serve(bind(host, port), signals=True)
    finally:
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
