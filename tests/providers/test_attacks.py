"""An attacker's second read of the upstream client (providers/http1.py, openai_compat.py): each
test is a hostile backend's answer that got past the first round of fixes (issue 12)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import tracemalloc

import pytest

from providers.base import BackendInfo, Limits, ProviderError, UpstreamRequest
from providers.http1 import HttpError
from providers.openai_compat import OpenAICompatProvider, _Splitter
from tests.providers import test_http1
from tests.providers.test_http1 import BODY, CHUNKED_HEAD, Serve, answer, answer_each, chunk

pytestmark = pytest.mark.timeout(10)

serve = test_http1.serve  # the fixture: raw loopback servers (test_http1's ``Wire``), closed after the test


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


@pytest.mark.asyncio
async def test_an_upgrade_answer_is_refused_as_invalid_not_a_transport_fault(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    # httptools raises HttpParserUpgrade, which is not an HttpParserError: it escaped
    # data_received, and the event loop logged a "Fatal error" traceback per hostile answer.
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
    wire = await serve(answer_each(upgrade + answer(b"{}")))
    pool = wire.pool()
    with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(HttpError, match=r"not valid HTTP/1\.1"):
        await pool.post(pool.head("chat/completions"), BODY, 1.0)
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


@pytest.mark.parametrize("cut", [0, 5, 10, 11])
def test_an_event_of_max_event_bytes_passes_wherever_its_reads_split(cut: int) -> None:
    # An event of exactly the cap passed in one read but was refused when a read ended between
    # the two line ends that close it: the one pending "\n" was counted as the event's.
    data = b"x" * 10 + b"\n\n"
    split = _Splitter(10)
    assert split.feed(data[:cut], "b") + split.feed(data[cut:], "b") == [b"x" * 10]
    with pytest.raises(ProviderError, match="max_event_bytes"):
        _Splitter(10).feed(b"x" * 11 + b"\n", "b")


@pytest.mark.asyncio
async def test_bytes_after_done_are_not_buffered_to_max_response_bytes(serve: Serve) -> None:
    # After [DONE] the rest of a stream's body is read, to reuse its connection: up to
    # max_response_bytes (16 MB) held in memory per stream, for any backend that keeps talking.
    tail = chunk(b": " + b"x" * (4 << 20) + b"\n\n")
    events = chunk(b'data: {"choices":[]}\n\n') + chunk(b"data: [DONE]\n\n")
    wire = await serve(answer_each(CHUNKED_HEAD + events + tail + chunk(b"")))
    info = BackendInfo("hostile", "volunteer", "openai", {"m": "m"})
    provider = OpenAICompatProvider(info, wire.base_url)
    stream = await provider.stream(UpstreamRequest("chat/completions", {"model": "m"}))
    assert [payload async for payload in stream] == [b'{"choices":[]}']
    await asyncio.sleep(0.1)  # the tail has arrived
    tracemalloc.start()
    try:
        await stream.aclose()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    await provider.close()
    assert peak < 1 << 20, f"{peak} bytes held to drain the stream's end"
