"""Shared fixtures: simulated upstreams and the gateway, each a real server on a loopback port.

Simulated backends run on one background event loop; each gateway runs under fedrouter's own server
(or uvicorn, when a test asks) in a thread of its own. ``start_gateway`` is the one way a test starts
an in-process gateway; ``fedrouter serve`` processes come from tests/processes.py. Tests talk to both
over HTTP only, as a client and an operator would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from router.sim.backend import SimBackend, SimBehavior, start_sim
from tests.servers import Served, ServerKind, admin, gateway_app, serve_app


class LoopThread:
    """An event loop in a daemon thread, for servers the tests share."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Sim:
    """A running simulated backend, controlled over its HTTP control endpoints."""

    name: str
    port: int
    backend: SimBackend
    runner: Any

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, **behavior: Any) -> None:
        r = httpx.post(f"http://127.0.0.1:{self.port}/_sim/behavior", json=behavior, timeout=5)
        r.raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_sim/stats", timeout=5).json()

    def last_request(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_sim/last_request", timeout=5).json()

    def reset(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/_sim/reset", timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def start_sim_backend(loop_thread: LoopThread) -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []

    def start(name: str, models: list[str] | None = None, **behavior: Any) -> Sim:
        backend = SimBackend(name, SimBehavior(**behavior), models)
        runner, port = loop_thread.run(start_sim(backend))
        sim = Sim(name, port, backend, runner)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        loop_thread.run(sim.runner.cleanup())


@dataclass
class Gateway:
    """A gateway served in a thread (see tests/servers.py), with a key per tenant; stopped at the
    end of the test, or at the end of a ``with`` block around it."""

    app: Any
    served: Served
    keys: dict[str, str]
    db_path: str | None
    sims: dict[str, Sim] = field(default_factory=dict)
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def server(self) -> Any:
        return self.served.server

    @property
    def thread(self) -> threading.Thread:
        return self.served.thread

    def client(self, tenant: str = "acme", **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys[tenant], **kw)
        self.clients.append(client)
        return client

    def async_client(self, tenant: str = "acme", **kw: Any) -> openai.AsyncOpenAI:
        kw.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.keys[tenant], **kw)

    def auth(self, tenant: str = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}

    def admin(self) -> dict[str, str]:
        return admin()

    def usage(self, tenant: str | None = None) -> dict[str, Any]:
        params = {"tenant": tenant, "limit": 1000} if tenant else {"limit": 1000}
        r = httpx.get(self.url + "/admin/v1/usage", params=params, headers=self.admin(), timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.served.stop()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def backend_entry(sim: Sim, cls: str = "datacenter", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": sim.name,
        "class": cls,
        "type": "openai",
        "base_url": sim.base_url,
        "models": ["m1"],
        "price": {"input": 1.0, "output": 2.0},
        "energy": {"joules_per_token": 0.5},
    }
    entry.update(extra)
    return entry


DEFAULT_TENANTS = [
    {"name": "acme", "policy": "balanced", "allow_volunteer": True},
    {"name": "other", "policy": "balanced"},
]


@pytest.fixture
def start_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gateway]]:
    """Start a gateway: ``start_gateway(backends, tenants, **top)`` with the config's top-level
    sections as keywords (``start_gateway(**raw_config)`` for a whole config), and

    - ``settings``: Settings fields over the tests' own (a fresh SQLite ledger, the test admin key,
      no key cache);
    - ``server``: "fedrouter" (the default, as in production) or "uvicorn";
    - ``options``: the server's own (``idle_s``, say);
    - ``keys``: the tenants to create a key for before serving (every config tenant by default).
    """
    running: list[Gateway] = []
    folder = tmp_path_factory.mktemp("gateways")

    def start(
        backends: list[dict[str, Any]],
        tenants: list[dict[str, Any]] | None = None,
        *,
        settings: dict[str, Any] | None = None,
        server: ServerKind = "fedrouter",
        options: dict[str, Any] | None = None,
        keys: Iterable[str] | None = None,
        **top: Any,
    ) -> Gateway:
        chosen = {"ledger": f"sqlite:///{folder / f'gw{len(running)}.db'}", **(settings or {})}
        app = gateway_app({"backends": backends, "tenants": tenants or DEFAULT_TENANTS, **top}, **chosen)
        names = [t.name for t in app.state.config.tenants] if keys is None else keys
        made = {name: app.state.keys.create(name)[0] for name in names}
        db_path = chosen["ledger"].removeprefix("sqlite:///") if chosen["ledger"].startswith("sqlite:///") else None
        gw = Gateway(app, serve_app(app, server, **(options or {})), made, db_path)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()
