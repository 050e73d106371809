"""A gateway app under uvicorn in a thread, for tests that need settings the shared fixture does not set."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from router.app import create_app
from router.config import parse_config
from router.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"


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
def serve(raw_config: dict[str, Any], **settings: Any) -> Iterator[str]:
    """Run a gateway for ``raw_config`` until the block ends; yields its base URL."""
    app = create_app(parse_config(raw_config), Settings(admin_key=ADMIN_KEY, **settings))
    server, thread, port = start_uvicorn(app)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}
