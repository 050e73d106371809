"""The one inference entry: a percent-encoded inference path is the same route (shed by the same
shedder), and inference served through an ASGI server cancels its upstream when the client leaves."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import orjson
import pytest

from router.app import create_app
from router.config import parse_config
from router.settings import Settings
from tests.conftest import Gateway, Sim, backend_entry
from tests.http.test_server import Wire, assert_openai_error, chat, request
from tests.servers import ADMIN_KEY, start_uvicorn, wait_for

pytestmark = pytest.mark.timeout(20)


def _encoded(data: bytes) -> bytes:
    return data.replace(b"POST /v1/chat/completions ", b"POST /v1/chat%2Fcompletions ", 1)


def test_a_percent_encoded_inference_path_is_shed_like_the_plain_one(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    slow = start_sim_backend("slowgen", tokens_per_s=10.0)
    gw = start_gateway([backend_entry(slow)], limits={"max_concurrency": 1})
    with Wire(gw.port) as held, Wire(gw.port) as other:
        held.send(chat(gw, 10, stream=True))  # about a second: it holds the one place
        assert held.head()[0] == 200
        other.send(_encoded(chat(gw, 1)))
        refused = other.answer()
        assert assert_openai_error(refused, 503)["code"] == "overloaded"
        assert refused.headers["x-should-retry"] == "true" and refused.headers["retry-after"] == "1"
        pieces = []
        while piece := held.chunk():
            pieces.append(piece)
        assert pieces[-1] == b"data: [DONE]\n\n"

    def served() -> bool:
        with Wire(gw.port) as wire:
            wire.send(_encoded(chat(gw, 2)))
            answer = wire.answer()
            return answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 2

    assert wait_for(served), "once the place is free the encoded path is served, as the same route"
    assert slow.stats()["requests"] == 2


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
