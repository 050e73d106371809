"""Backends that attack the gateway, against a real ``fedrouter serve`` process: a scripted TCP
upstream serves each attack (a decompression bomb, a header flood, a trickle, an endless line,
comments, a huge error body, a close after a kept-alive request, stray bytes, a request never
read) while another client samples ``GET /healthz``.

For each attack the gateway's resident memory stays under 300 MB, the other client's p99 latency
under 100 ms, the attacking request gets its documented outcome (fallback to the healthy backend
before the first byte, one error event after it) and the healthy backend records no failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from router.sim.backend import SimBackend, SimBehavior, start_sim
from tests.cli.test_cli import _free_port, _run, _spawn, _wait_ready
from tests.providers.upstreams import ANSWER, SSE_HEAD, Scripted, Step, chunk_event, json_answer

MSG = [{"role": "user", "content": "hello"}]

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = "hostile-suite-admin-key-0123456789"
RSS_LIMIT_KB = 300 * 1024
P99_LIMIT_S = 0.1
# A kept-alive answer (no connection: close), so that the gateway reuses its connection.
KEPT_ALIVE = json_answer(ANSWER).replace(b"connection: close\r\n", b"")
STRAY = json_answer({**ANSWER, "id": "stray"}).replace(b"Hello there", b"STRAY BYTES")


def gzip_bomb(megabytes: int) -> bytes:
    """A valid gzip body inflating to ``megabytes`` MiB of zeros: one fully flushed deflate block
    of 1 MiB repeated (a full flush makes each block the same bytes), then the gzip trailer."""
    zeros = bytes(1 << 20)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    end = squeeze.flush()
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * megabytes + end + struct.pack("<II", crc, (megabytes << 20) & 0xFFFFFFFF)


class Mute:
    """A backend that accepts connections and never reads a byte of them."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def _hold(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted sockets inherit it
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._hold, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@dataclass
class Gateway:
    url: str
    pid: int
    key: str
    scripted: Scripted
    mute: Mute
    sims: dict[str, SimBackend] = field(default_factory=dict)

    def backends(self) -> dict[str, dict[str, Any]]:
        r = httpx.get(self.url + "/admin/v1/backends", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
        r.raise_for_status()
        return {b["name"]: b["stats"] for b in r.json()["data"]}

    def post(self, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {self.key}"},
            json=body,
            timeout=timeout,
        )


def _config(scripted: Scripted, mute: Mute, good: int, narrow: int) -> str:
    fast = "{connect: 1, first_token: 1, idle: 1, total: 3}"
    return f"""
backends:
  - {{name: hostile, class: datacenter, type: openai, base_url: "http://127.0.0.1:{scripted.port}/v1",
      models: [m1], price: {{input: 0, output: 0}}, timeouts: {fast}}}
  - {{name: mute, class: datacenter, type: openai, base_url: "http://127.0.0.1:{mute.port}/v1",
      models: [m2], price: {{input: 0, output: 0}}, timeouts: {fast}}}
  - {{name: good, class: datacenter, type: openai, base_url: "http://127.0.0.1:{good}/v1",
      models: [m1, m2], price: {{input: 9, output: 9}}}}
  - {{name: narrow, class: datacenter, type: openai, base_url: "http://127.0.0.1:{narrow}/v1",
      models: [m3], price: {{input: 1, output: 1}}, max_connections: 1,
      timeouts: {{connect: 0.3, first_token: 5, idle: 5, total: 10}}}}
tenants:
  - {{name: acme, allow_volunteer: true}}
routing: {{exploration: 0.0, eject_after_failures: 1000, eject_min_requests: 1000, retries_per_backend: 0}}
"""


@pytest.fixture(scope="module")
def gateway(loop_thread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    scripted, mute = Scripted(), Mute()
    server = loop_thread.run(scripted.start())
    loop_thread.run(mute.start())
    sims = {"good": SimBackend("good", SimBehavior(), ["m1", "m2"]), "narrow": SimBackend("narrow", SimBehavior())}
    sims["narrow"].behavior.ttft_s = 1.0
    started = {name: loop_thread.run(start_sim(sim)) for name, sim in sims.items()}
    folder = tmp_path_factory.mktemp("hostile")
    cfg = folder / "fed.yaml"
    cfg.write_text(_config(scripted, mute, started["good"][1], started["narrow"][1]))
    ledger = f"sqlite:///{folder / 'ledger.db'}"
    created = _run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    port = _free_port()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FEDROUTER_ADMIN_KEY", ADMIN_KEY)  # the serve process inherits it
            with _spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger) as proc:
                _wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
                key = created.stdout.strip().splitlines()[-1]
                yield Gateway(f"http://127.0.0.1:{port}", proc.pid, key, scripted, mute, sims)
    finally:
        for runner, _ in started.values():
            loop_thread.run(runner.cleanup())
        loop_thread.run(mute.stop())
        loop_thread.run(scripted.stop(server))


# The other client, in a process of its own so that nothing of the test's own work can delay it:
# GET /healthz on one kept-alive connection every 2 ms, and the gateway's VmRSS after each, until
# its stdin closes; then one JSON line with what it saw.
SAMPLER = r"""
import http.client, json, sys, threading, time
port, pid = int(sys.argv[1]), sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
seen = {"latencies": [], "at": [], "failures": [], "rss_kb": []}
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
print("ready", flush=True)
began = time.perf_counter()
while not stop.is_set():
    started = time.perf_counter()
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        seen["failures"].append(repr(exc))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        seen["latencies"].append(time.perf_counter() - started)
        seen["at"].append(started - began)
        if resp.status != 200:
            seen["failures"].append(f"healthz answered {resp.status}")
    with open(f"/proc/{pid}/status") as status:
        seen["rss_kb"] += [int(line.split()[1]) for line in status if line.startswith("VmRSS:")]
    stop.wait(0.002)
print(json.dumps(seen), flush=True)
"""


@dataclass
class Watch:
    latencies: list[float] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # when each sample began, from the watch's start
    failures: list[str] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def slowest(self) -> list[tuple[float, float]]:
        """The five slowest samples: (when, how long), in seconds."""
        return sorted(zip(self.at, self.latencies, strict=True), key=lambda pair: -pair[1])[:5]


@contextlib.contextmanager
def watched(gw: Gateway) -> Iterator[Watch]:
    """Another client sampling /healthz (and the gateway's RSS) while the block runs."""
    port = gw.url.rsplit(":", 1)[1]
    with subprocess.Popen(
        [sys.executable, "-c", SAMPLER, port, str(gw.pid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as sampler:
        assert sampler.stdin is not None and sampler.stdout is not None
        assert sampler.stdout.readline().strip() == "ready"
        watch = Watch()
        try:
            yield watch
        finally:
            sampler.stdin.close()
            seen = orjson.loads(sampler.stdout.readline() or b"{}")
            sampler.wait(10)
        watch.latencies, watch.at = seen["latencies"], seen["at"]
        watch.failures, watch.rss_kb = seen["failures"], seen["rss_kb"]


def _events(resp: httpx.Response) -> list[dict[str, Any]]:
    frames = [f.removeprefix("data: ") for f in resp.text.split("\n\n") if f]
    return [orjson.loads(f) for f in frames if f != "[DONE]"]


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


def _attack(gw: Gateway, steps: list[Step], body: dict[str, Any], *, twice: bool = False) -> list[httpx.Response]:
    """Serve ``steps`` from the hostile backend while ``body`` is asked for (twice: one after the
    other, as a client reusing the gateway would); the watch's limits are checked here."""
    gw.scripted.steps = steps
    gw.scripted.requests = 0
    before = gw.backends()["good"]["failures"]
    with watched(gw) as watch:
        time.sleep(0.05)  # a baseline before the attack
        answers = [gw.post(body) for _ in range(2 if twice else 1)]
        time.sleep(0.3)  # the attack may go on after the answer: watch it a while longer
    # Seen with pytest -s: the figures each attack left (the limits are asserted below).
    print(
        f"RSS max {max(watch.rss_kb) // 1024} MB, /healthz p99 {watch.p99() * 1000:.1f} ms over {len(watch.latencies)}"
    )
    assert not watch.failures, watch.failures[:3]
    assert len(watch.latencies) >= 20
    assert max(watch.rss_kb) < RSS_LIMIT_KB, f"RSS reached {max(watch.rss_kb) // 1024} MB"
    assert watch.p99() < P99_LIMIT_S, f"p99 of /healthz was {watch.p99() * 1000:.0f} ms; slowest {watch.slowest()}"
    good = gw.backends()["good"]
    assert (good["failures"], good["ejected"]) == (before, False)
    return answers


# The hostile backend first, whatever its record so far; the healthy one next.
PLAIN = {"model": "m1", "messages": MSG, "max_tokens": 4, "provider": {"order": ["hostile", "good"]}}
STREAM = {**PLAIN, "stream": True}


@pytest.mark.parametrize(
    ("steps", "stream"),
    [
        pytest.param(
            lambda: [
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                b"content-length: %d\r\n\r\n" % len(bomb := gzip_bomb(1536)),
                bomb,
            ],
            False,
            id="gzip-bomb",
        ),
        pytest.param(lambda: [b"HTTP/1.1 200 OK\r\n" + b"x-dup: aaaaaaaaaa\r\n" * 1_100_000], False, id="header-flood"),
        pytest.param(lambda: [SSE_HEAD, b"data: "] + [b"x", 0.05] * 400, True, id="trickle"),
        pytest.param(lambda: [SSE_HEAD] + [b": ping\n\n", 0.003] * 2000, True, id="comments"),
        pytest.param(
            lambda: (
                [b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1073741824\r\n\r\n"] + [bytes(1 << 20)] * 1024
            ),
            False,
            id="huge-error-body",
        ),
    ],
)
def test_an_attack_before_the_first_byte_falls_back(gateway: Gateway, steps: Any, stream: bool) -> None:
    [resp] = _attack(gateway, steps(), STREAM if stream else PLAIN)
    assert resp.status_code == 200, resp.text
    assert (resp.headers["x-fedrouter-backend"], resp.headers["x-fedrouter-attempts"]) == ("good", "2")
    if stream:
        assert _text(_events(resp)) and resp.text.endswith("data: [DONE]\n\n")
    else:
        assert resp.json()["choices"][0]["message"]["content"]
    assert gateway.scripted.requests == 1
    assert resp.elapsed.total_seconds() < 3.0  # within the hostile backend's first_token or total, then the good one


def test_an_endless_data_line_mid_stream_ends_with_one_error_event(gateway: Gateway) -> None:
    steps: list[Step] = [SSE_HEAD, chunk_event("Hello"), b"data: "] + [b"a" * 65536, 0.005] * 200
    [resp] = _attack(gateway, steps, STREAM)
    events = _events(resp)
    assert resp.headers["x-fedrouter-backend"] == "hostile" and _text(events) == "Hello"
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert "max_event_bytes" in errors[0]["error"]["message"]


def test_a_request_the_backend_closed_on_is_not_sent_again(gateway: Gateway) -> None:
    """The first answer keeps the connection alive; the second request goes out on it and the
    backend closes without a byte. It may have begun generating: the gateway falls back rather
    than send the request to it again."""
    first, second = _attack(gateway, [KEPT_ALIVE, 1.0], PLAIN, twice=True)
    assert first.headers["x-fedrouter-backend"] == "hostile"
    assert (second.headers["x-fedrouter-backend"], second.headers["x-fedrouter-attempts"]) == ("good", "2")
    assert gateway.scripted.requests == 1  # the backend saw the POST once: the second was never re-sent


def test_stray_bytes_after_an_answer_are_never_the_next_answer(gateway: Gateway) -> None:
    first, second = _attack(gateway, [KEPT_ALIVE + STRAY, 1.0], PLAIN, twice=True)
    for resp in (first, second):
        assert resp.headers["x-fedrouter-backend"] == "hostile"
        assert resp.json()["choices"][0]["message"]["content"] == "Hello there"
    assert gateway.scripted.requests == 2  # the second on a new connection


def test_a_backend_that_never_reads_the_request_is_left_behind(gateway: Gateway) -> None:
    body = {
        "model": "m2",
        "messages": [{"role": "user", "content": "word " * 100_000}],
        "max_tokens": 4,
        "provider": {"order": ["mute", "good"]},
    }
    accepted = gateway.mute.accepted
    [resp] = _attack(gateway, [], body)
    assert (resp.headers["x-fedrouter-backend"], resp.headers["x-fedrouter-attempts"]) == ("good", "2")
    assert gateway.mute.accepted == accepted + 1
    assert resp.elapsed.total_seconds() < 4.5  # the mute backend's total (3 s), then the good one


def test_the_gateways_own_overload_is_never_the_backends_failure(gateway: Gateway) -> None:
    """``narrow`` allows one connection; a second request waits ``timeouts.connect`` for it and
    gets 503 (retry: true), and the backend is neither failed nor ejected."""
    body = {"model": "m3", "messages": MSG, "max_tokens": 4}
    with watched(gateway):
        results: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: results.append(gateway.post(body)))
        holder.start()
        time.sleep(0.3)
        refused = gateway.post(body)
        holder.join(10)
    assert results[0].status_code == 200
    assert refused.status_code == 503 and refused.headers["x-should-retry"] == "true", refused.text
    error = refused.json()["error"]
    assert error["code"] == "no_backend_available" and "max_connections" in error["message"]
    narrow = gateway.backends()["narrow"]
    assert (narrow["failures"], narrow["ejected"]) == (0, False)
