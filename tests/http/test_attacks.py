"""An attacker's second read of the hardened edge, over real loopback sockets: each test is an
attack that got past the first round of fixes (issue 12), kept so that it stays closed."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Gateway, Sim, backend_entry
from tests.http.test_server import Wire, request
from tests.servers import wait_for

pytestmark = pytest.mark.timeout(30)


def _unread(port: int) -> socket.socket:
    """A client that reads nothing for now: a small receive buffer, so that the gateway's writes stall soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.fixture
def sim(start_sim_backend: Callable[..., Sim]) -> Sim:
    return start_sim_backend("dc1")


def test_head_on_a_streamed_get_route_sends_no_chunk_terminator(
    sim: Sim, start_gateway: Callable[..., Gateway]
) -> None:
    # A chunked answer's "0\r\n\r\n" is body: after a HEAD, a pipelining client (or a proxy in
    # front) reads it as the start of the next answer, and every answer after it is off by one.
    gw = start_gateway([backend_entry(sim)])
    export = "/v1/usage/export?from=2026-01-01&to=2026-01-02"
    with Wire(gw.port) as wire:
        wire.send(request("HEAD", export, headers=gw.auth()) + request("GET", "/healthz"))
        head = wire.answer(head_only=True)
        assert head.status == 200
        after = wire.answer()
        assert after.status == 200 and after.json() == {"status": "ok"}


def _backend_stats(gw: Gateway) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{gw.port}/admin/v1/backends", headers=gw.admin(), timeout=5)
    r.raise_for_status()
    return {b["name"]: b["stats"] for b in r.json()["data"]}


def test_a_client_that_reads_slowly_is_never_the_backends_failure(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    # The backend answers at once; the client reads nothing for longer than the backend's
    # timeouts.total (yet less than write_stall_s and the relay's grace), then reads it all. The
    # time went to the client, so the backend must not be failed for it, nor ejected.
    sim = start_sim_backend("fast", reply="word " * 400)
    gw = start_gateway(
        [backend_entry(sim, timeouts={"total": 1.0})],
        limits={"write_stall_s": 30.0},
        routing={"eject_after_failures": 1},
    )
    body = orjson.dumps(
        {"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20000, "stream": True}
    )
    with _unread(gw.port) as sock:
        sock.sendall(request("POST", "/v1/chat/completions", body, gw.auth()))
        time.sleep(1.4)
        sock.settimeout(5.0)
        seen = b""
        with contextlib.suppress(OSError):
            while not seen.endswith(b"\r\n0\r\n\r\n") and (data := sock.recv(1 << 20)):
                seen = seen[-64:] + data
    assert b"data: [DONE]" in seen, "the slow client got its whole answer"
    stats = wait_for(lambda: _backend_stats(gw)["fast"])
    assert (stats["failures"], stats["ejected"]) == (0, False), stats
