"""A gateway app served in a thread (by fedrouter's own server, as in production, or by uvicorn),
for tests that need settings the shared fixture does not set."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
import uvloop

from router.app import create_app
from router.config import parse_config
from router.http.server import Server
from router.http.workers import bind
from router.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"


def start_server(app: Any, **options: Any) -> tuple[Server, threading.Thread, int]:
    """Serve ``app`` with fedrouter's server on a free loopback port in a thread (on uvloop, as
    ``fedrouter serve`` does); returns once it accepts connections. Stop it with ``server.stop()``."""
    sock = bind("127.0.0.1", 0)
    server = Server(app, **options)
    failed: list[BaseException] = []

    def main() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(server.serve(sock))
        except BaseException as exc:  # reported by the wait below
            failed.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if failed or time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"gateway did not start: {failed[0] if failed else 'timed out'}")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


def start_uvicorn(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Serve ``app`` on a free loopback port in a thread; returns once it accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


@contextlib.contextmanager
def uvicorn_gateway(backend: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """The app for ``backend`` and tenant "acme" under uvicorn until the block ends; yields its
    port and a key of acme's."""
    app = create_app(
        parse_config({"backends": [backend], "tenants": [{"name": "acme"}]}),
        Settings(ledger="sqlite:///:memory:", admin_key=ADMIN_KEY, key_cache_s=0),
    )
    key = app.state.keys.create("acme")[0]
    server, thread, port = start_uvicorn(app)
    try:
        yield port, key
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def serve(raw_config: dict[str, Any], **settings: Any) -> Iterator[str]:
    """Run a gateway for ``raw_config`` until the block ends; yields its base URL."""
    app = create_app(parse_config(raw_config), Settings(admin_key=ADMIN_KEY, **settings))
    server, thread, port = start_server(app)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        thread.join(10)


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """``check()`` once it is truthy, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)
