"""The one inference entry under another ASGI server: inference cancels its upstream when the
client leaves. (A percent-encoded inference path is the same route, shed by the same shedder:
tests/http/test_hostile_clients.py.)"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import orjson
import pytest

from tests.conftest import Gateway, Sim, backend_entry
from tests.http.test_server import request
from tests.servers import ADMIN_KEY, wait_for

pytestmark = pytest.mark.timeout(20)


def test_inference_under_uvicorn_cancels_its_upstream_when_the_client_leaves(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    sim = start_sim_backend("uvslow", ttft_s=4.0)
    with start_gateway([backend_entry(sim)], [{"name": "acme"}], server="uvicorn") as gw:
        port, key = gw.port, gw.keys["acme"]
        body = orjson.dumps(
            {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
        )
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request("POST", "/v1/chat/completions", body, headers))
            assert wait_for(lambda: sim.stats()["requests"] == 1, 2.0)
            left = time.monotonic()
        # The backend has not sent its first event (4 s away): only the gateway noticing the
        # client leaving, and cancelling its call, ends the backend's work this early.
        assert wait_for(lambda: sim.stats()["cancelled_streams"] == 1, 2.0)
        assert time.monotonic() - left < 2.5
        assert sim.stats()["completed"] == 0


def test_an_unread_stream_under_uvicorn_is_ended_at_its_backends_total(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    """Another ASGI server shows no write deadline to the app, but the backend's timeouts.total
    still bounds the relay: the stream is ended, the backend's stream cancelled, and the tokens
    so far billed as a disconnect."""
    sim = start_sim_backend("uvfast", reply="word " * 400)
    with start_gateway([backend_entry(sim, timeouts={"total": 1.0})], [{"name": "acme"}], server="uvicorn") as gw:
        port, key = gw.port, gw.keys["acme"]
        body = orjson.dumps(
            {"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 60000, "stream": True}
        )
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(request("POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}"}))
            started = time.monotonic()
            assert wait_for(lambda: sim.stats()["cancelled_streams"] == 1, 6.0), "the relay was never ended"
            assert 2.0 < time.monotonic() - started < 5.0  # timeouts.total and its grace
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}

        def rows() -> list[dict[str, object]]:
            return httpx.get(f"http://127.0.0.1:{port}/admin/v1/usage", headers=admin, timeout=5).json()["recent"]

        recent = wait_for(rows)
        assert len(recent) == 1 and recent[0]["outcome"] == "client_disconnected"
        assert 0 < recent[0]["output_tokens"] < 60000  # type: ignore[operator]
