"""An attacker's second read of the hardened edge, over real loopback sockets: each test is an
attack that got past the first round of fixes (issue 12), kept so that it stays closed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Gateway, Sim, backend_entry
from tests.http.test_server import Wire, request

pytestmark = pytest.mark.timeout(30)


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
