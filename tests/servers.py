"""An app served in a thread on a loopback port: the one function every in-process gateway (and the
admin page) is started with.

fedrouter's own server runs it by default, on uvloop as ``fedrouter serve`` does; uvicorn runs it
when a test asks, to show that the app stays a plain ASGI app. The ``start_gateway`` fixture
(tests/conftest.py) builds the app and its keys on top of this; real processes are in
tests/processes.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
import uvloop

from router.app import create_app
from router.config import parse_config
from router.http.server import Server
from router.http.workers import bind
from router.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"

ServerKind = Literal["fedrouter", "uvicorn"]


@dataclass
class Served:
    """A server running an app in a thread; ``stop`` ends it (a second stop is harmless)."""

    server: Server | uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if isinstance(self.server, Server):
            self.server.stop()
        else:
            self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_app(raw_config: dict[str, Any], **settings: Any) -> Any:
    """The gateway app for ``raw_config``, with the tests' admin key and no key cache unless
    ``settings`` say otherwise."""
    return create_app(parse_config(raw_config), Settings(**{"admin_key": ADMIN_KEY, "key_cache_s": 0, **settings}))


def serve_app(app: Any, server: ServerKind = "fedrouter", **options: Any) -> Served:
    """Serve ``app`` on a free loopback port in a thread; returns once it accepts connections.
    ``options`` go to the server: fedrouter's ``Server`` (``idle_s``, ``grace_s``) or ``uvicorn.Config``."""
    if server == "uvicorn":
        return _uvicorn(app, **options)
    return _fedrouter(app, **options)


def _fedrouter(app: Any, **options: Any) -> Served:
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
    _wait_started(lambda: server.started, thread, failed)
    return Served(server, thread, sock.getsockname()[1])


def _uvicorn(app: Any, **options: Any) -> Served:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait_started(lambda: server.started, thread, [])
    return Served(server, thread, sock.getsockname()[1])


def _wait_started(started: Callable[[], bool], thread: threading.Thread, failed: list[BaseException]) -> None:
    deadline = time.monotonic() + 10
    while not started():
        if failed or time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"gateway did not start: {failed[0] if failed else 'timed out'}")
        time.sleep(0.01)


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
