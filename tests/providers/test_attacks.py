"""An attacker's second read of the upstream client (providers/http1.py, openai_compat.py): each
test is a hostile backend's answer that got past the first round of fixes (issue 12)."""

from __future__ import annotations

import gzip
import ssl
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from providers.base import Limits
from providers.http1 import HttpError
from tests.providers.test_http1 import BODY, Handler, Serve, Wire, answer, answer_each

pytestmark = pytest.mark.timeout(10)


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts raw loopback servers (test_http1's ``Wire``), closed after the test."""
    wires: list[Wire] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Wire:
        wire = Wire(handler, ssl_context)
        wires.append(wire)
        await wire.start()
        return wire

    yield start
    for wire in reversed(wires):
        await wire.close()


@pytest.mark.asyncio
async def test_bytes_after_a_compressed_body_are_refused_not_held(serve: Serve) -> None:
    # zlib keeps whatever follows the end of a gzip member in unused_data, growing it by a copy
    # per read: uncounted by max_response_bytes (nothing inflates), and quadratic in time.
    tail = b"\xff" * (24 << 20)
    wire = await serve(answer_each(answer(gzip.compress(b"{}") + tail, b"content-encoding: gzip")))
    pool = wire.pool(limits=Limits(max_response_bytes=1 << 20))
    resp = await pool.post(pool.head("chat/completions"), BODY, 1.0)
    started = time.monotonic()
    with pytest.raises(HttpError, match="after its compressed body"):
        await resp.read(5.0)
    assert resp.closed and time.monotonic() - started < 1.0
