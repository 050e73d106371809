"""Real ``fedrouter`` processes, run as an operator runs them: the one place the tests start the CLI.

In-process gateways (tests/servers.py) are quicker and let a test reach into the app; these are
for what only a process shows: the command line, worker processes, signals and crashes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

FEDROUTER = [sys.executable, "-c", "from router.cli import main; main()"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``fedrouter ARGS`` to its end, with ``env`` over this process's environment."""
    return subprocess.run(
        [*FEDROUTER, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, check=False
    )


def free_port() -> int:
    """A loopback port free now (a process told to listen on it binds it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def spawn(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
) -> Iterator[subprocess.Popen[str]]:
    """Run ``fedrouter ARGS`` (under ``wrapper``, e.g. ``prlimit``; with ``env`` over this process's
    environment) until the block ends, then stop it as an operator would."""
    with subprocess.Popen(
        [*wrapper, *FEDROUTER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    ) as proc:
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, as an operator would, and SIGKILL if it has not exited within 15 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 15) -> float:
    """Seconds until ``url`` answers 200; raises if ``proc`` exits or ``timeout`` passes first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")
