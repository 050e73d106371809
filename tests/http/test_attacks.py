"""An attacker's second read of the hardened edge, over real loopback sockets: each test is an
attack that got past the first round of fixes (issue 12), kept so that it stays closed."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from router.app import create_app
from router.config import parse_config
from router.settings import Settings
from tests.conftest import Gateway, Sim, backend_entry
from tests.http.test_server import Wire, request
from tests.servers import ADMIN_KEY, start_uvicorn, wait_for

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


@contextlib.contextmanager
def _uvicorn(raw: dict[str, Any]) -> Iterator[tuple[int, dict[str, str]]]:
    """The app for ``raw`` under uvicorn; yields its port and the authorization of tenant acme."""
    app = create_app(parse_config(raw), Settings(ledger="sqlite:///:memory:", admin_key=ADMIN_KEY, key_cache_s=0))
    key = app.state.keys.create("acme")[0]
    server, thread, port = start_uvicorn(app)
    try:
        yield port, {"authorization": f"Bearer {key}"}
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_trickled_body_under_uvicorn_holds_no_inference_place(sim: Sim) -> None:
    # uvicorn has no body deadline. Admitted by the shedder before its body was read, a client
    # that sends a head and then only a byte or two held one of max_concurrency's places for as
    # long as it liked: a few such connections shed every other tenant (503).
    raw = {"backends": [backend_entry(sim)], "tenants": [{"name": "acme"}], "limits": {"max_concurrency": 1}}
    with _uvicorn(raw) as (port, auth), socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        slow.sendall(request("POST", "/v1/chat/completions", body, auth)[:-5])  # all but the body's end
        time.sleep(0.3)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, headers=auth, timeout=5)
        assert answer.status_code == 200, answer.text
