"""The one inference entry under another ASGI server: inference cancels its upstream when the
client leaves. (A percent-encoded inference path is the same route, shed by the same shedder:
tests/http/test_hostile_clients.py.)"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import orjson
import pytest

from router.app import create_app
from router.config import parse_config
from router.settings import Settings
from tests.conftest import Sim, backend_entry
from tests.http.test_server import request
from tests.servers import ADMIN_KEY, start_uvicorn, wait_for

pytestmark = pytest.mark.timeout(20)


def test_inference_under_uvicorn_cancels_its_upstream_when_the_client_leaves(
    start_sim_backend: Callable[..., Sim],
) -> None:
    sim = start_sim_backend("uvslow", ttft_s=4.0)
    app = create_app(
        parse_config({"backends": [backend_entry(sim)], "tenants": [{"name": "acme"}]}),
        Settings(ledger="sqlite:///:memory:", admin_key=ADMIN_KEY, key_cache_s=0),
    )
    key = app.state.keys.create("acme")[0]
    server, thread, port = start_uvicorn(app)
    try:
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
    finally:
        server.should_exit = True
        thread.join(10)
