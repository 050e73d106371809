"""The gateway's sockets and processes: binding the port, serving it in this process, or in
several worker processes that each run their own app (the way uvicorn's supervisors do)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from router.http.asgi import GatewayApp
from router.http.server import Server


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A listening TCP socket; ``reuse_port`` lets other sockets listen on the same port, and
    without ``listen`` it only holds the port (see ``bind_for_workers``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.setblocking(False)
    return sock


def bind_for_workers(host: str, port: int) -> socket.socket:
    """The socket for ``run_workers``. On Linux a socket that only holds the port: each worker
    listens on a socket of its own there (SO_REUSEPORT) and the kernel spreads new connections
    evenly across them, where one shared accept queue lets the quickest worker take most of a
    light load. Elsewhere SO_REUSEPORT does not balance, so the workers share one listening socket."""
    if sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT"):
        # Without SO_REUSEPORT first: a port another server holds is refused here, rather than
        # joined, and port 0 becomes a real port.
        with bind(host, port, listen=False) as probe:
            port = probe.getsockname()[1]
        return bind(host, port, reuse_port=True, listen=False)
    return bind(host, port)


def run(app: GatewayApp, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, on uvloop when it is installed."""
    loop_factory: Any = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(Server(app).serve(sock, on_ready, signals=True))


def run_workers(workers: int, sock: socket.socket, build: Callable[[], GatewayApp]) -> int:
    """``workers`` processes, each with its own app from ``build`` (a module-level function, so
    that it can be named to a spawned process), on ``sock`` from ``bind_for_workers``: on its
    port each with a socket of its own if ``sock`` only holds it, else all accepting on ``sock``.
    SIGINT and SIGTERM are passed on; returns when every worker has ended."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(sock, build), name=f"fedrouter-worker-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()

    def forward(signum: int, _: Any) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


def _worker(sock: socket.socket, build: Callable[[], GatewayApp]) -> None:
    _end_with_parent()
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):  # it holds the port: take a socket beside it
        host, port = sock.getsockname()[:2]
        # Not listening yet: the kernel would queue connections for a worker still starting
        # (or one whose start fails). Server.serve listens once the app is ready.
        own = bind(host, port, reuse_port=True, listen=False)
        sock.close()
        sock = own
    run(build(), sock)


def _end_with_parent() -> None:
    """On Linux, SIGTERM this worker when the process that started it dies, even by SIGKILL: an
    orphaned worker would go on serving the port alone."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took hold
        os.kill(os.getpid(), signal.SIGTERM)
