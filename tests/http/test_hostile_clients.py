"""Hostile clients against the gateway, over real sockets: slow heads and bodies, streams nobody
reads, connection floods up to the cap (also at a 256-descriptor limit), a %2F inference path,
pipelined Expect and smaller edge defects. In each case the attack is bounded and refused in
OpenAI's shape, and another tenant, on a connection of its own, keeps getting answers."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.responses import StreamingResponse

from tests.conftest import Gateway, Sim, backend_entry
from tests.http.test_server import DONE, Wire, assert_openai_error, chat, request
from tests.processes import free_port, run, spawn, wait_ready
from tests.servers import wait_for

pytestmark = pytest.mark.timeout(30)


def _served(gw: Gateway, wire: Wire) -> None:
    """The other tenant, on its own kept-alive connection, is answered."""
    wire.send(chat(gw, 1, extra={"authorization": gw.auth("other")["authorization"]}))
    answer = wire.answer()
    assert answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 1


def _unread(port: int) -> socket.socket:
    """A client that will read nothing: a small receive buffer, so that the gateway's writes stall soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.fixture
def sim(start_sim_backend: Callable[..., Sim]) -> Sim:
    return start_sim_backend("dc1")


# slow heads and bodies


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_trickled_request_is_408_and_closed(sim: Sim, start_gateway: Callable[..., Gateway], part: str) -> None:
    gw = start_gateway([backend_entry(sim)], limits={"head_timeout_s": 1.0, "body_timeout_s": 1.0})
    data = chat(gw, 1)
    head_end = data.index(b"\r\n\r\n") + 4
    with Wire(gw.port) as slow, Wire(gw.port) as other:
        started = time.monotonic()
        sent = 0 if part == "head" else head_end
        slow.send(data[:sent])
        refused = None
        while time.monotonic() - started < 6:
            with contextlib.suppress(OSError):
                slow.send(data[sent : sent + 1])  # one byte every 0.2 s, never the whole request
            sent += 1
            _served(gw, other)
            time.sleep(0.2)
            slow.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                slow.buf += slow.sock.recv(65536)
            slow.sock.setblocking(True)
            if b"\r\n\r\n" in slow.buf:
                refused = slow.answer()
                break
        assert refused is not None, "the trickle was never refused"
        assert time.monotonic() - started < 3.5
        assert assert_openai_error(refused, 408)["message"].startswith(
            f"The request {'headers' if part == 'head' else 'body'}"
        )
        assert refused.headers["x-should-retry"] == "true" and refused.headers["connection"] == "close"
        assert wait_for(slow.closed_by_server, 3.0)
    assert sim.stats()["requests"] > 0 and gw.usage("acme")["recent"] == []


# streams nobody reads


@pytest.mark.parametrize("bound", ["write_stall_s", "timeouts.total"])
def test_an_unread_stream_is_ended_freed_and_billed(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway], bound: str
) -> None:
    sim = start_sim_backend("fast", reply="word " * 400)
    limits = {"max_concurrency": 1, "write_stall_s": 1.0 if bound == "write_stall_s" else 60.0}
    extra = {"timeouts": {"total": 1.0}} if bound == "timeouts.total" else {}
    gw = start_gateway([backend_entry(sim, **extra)], limits=limits)
    with _unread(gw.port) as sock, Wire(gw.port) as other:
        body = orjson.dumps(
            {"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 60000, "stream": True}
        )
        sock.sendall(request("POST", "/v1/chat/completions", body, gw.auth()))
        time.sleep(0.3)
        other.send(chat(gw, 1, extra={"authorization": gw.auth("other")["authorization"]}))
        assert assert_openai_error(other.answer(), 503)["code"] == "overloaded"  # the one place is held
        other.send(request("GET", "/healthz"))
        assert other.answer().status == 200  # and the gateway itself is not

        def freed() -> bool:
            other.send(chat(gw, 1, extra={"authorization": gw.auth("other")["authorization"]}))
            return other.answer().status == 200

        started = time.monotonic()
        assert wait_for(freed, 8.0), "the unread stream kept its place"
        assert time.monotonic() - started < 5.0
        assert wait_for(lambda: sim.stats()["cancelled_streams"] == 1, 3.0), "the backend's stream was not ended"
    rows = wait_for(lambda: gw.usage("acme")["recent"])
    assert len(rows) == 1 and rows[0]["outcome"] == "client_disconnected"
    assert 0 < rows[0]["output_tokens"] < 60000, "the tokens generated so far are billed"


def test_pipelined_answers_nobody_reads_do_not_pile_up(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    sim = start_sim_backend("wordy", reply="word " * 1000)
    gw = start_gateway([backend_entry(sim)], limits={"write_stall_s": 1.0})
    with _unread(gw.port) as sock, Wire(gw.port) as other:
        sock.settimeout(3)
        ask = chat(gw, 1000)
        with contextlib.suppress(OSError):  # the gateway stops reading, then gives up on this client
            for _ in range(3000):  # about 18 MB of answers, more than socket buffers hold
                sock.sendall(ask)
        _served(gw, other)
        # The gateway stops reading (and answering) this client once its answers are not being
        # read, and ends the connection once they have stalled for write_stall_s.
        answered = wait_for(lambda: sim.stats()["requests"] > 0 and sim.stats()["completed"], 2.0)
        time.sleep(2.5)
        settled = sim.stats()["completed"]
        assert settled < 3000 and answered <= settled
        _served(gw, other)
        with pytest.raises(ConnectionResetError):
            for _ in range(1000):
                if not sock.recv(65536):
                    raise ConnectionResetError("closed")


# connection floods


def test_connections_beyond_the_cap_get_503_and_close(sim: Sim, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway([backend_entry(sim)], limits={"max_connections": 20})
    with Wire(gw.port) as other, contextlib.ExitStack() as stack:
        _served(gw, other)
        flood = [stack.enter_context(Wire(gw.port)) for _ in range(19)]
        for wire in flood[:3]:
            wire.send(request("GET", "/healthz"))
            assert wire.answer().status == 200  # up to the cap, served
        with Wire(gw.port) as over:
            over.send(request("GET", "/healthz"))
            refused = over.answer()
            assert assert_openai_error(refused, 503)["code"] == "overloaded"
            assert refused.headers["x-should-retry"] == "true" and refused.headers["connection"] == "close"
            assert over.closed_by_server()
        _served(gw, other)
        flood.pop().sock.close()
        time.sleep(0.2)
        with Wire(gw.port) as again:  # a place is free again
            again.send(request("GET", "/healthz"))
            assert again.answer().status == 200


@pytest.fixture
def fd_config(sim: Sim, tmp_path: Path) -> tuple[Path, str, str]:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(
        f"backends:\n  - {{name: up, class: datacenter, type: openai, base_url: '{sim.base_url}', models: [m1],"
        " price: {input: 1.0, output: 2.0}}\ntenants:\n  - name: acme\n  - name: other\n"
    )
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    keys = []
    for tenant in ("acme", "other"):
        created = run("keys", "create", "--tenant", tenant, "--config", str(cfg), "--ledger", ledger)
        assert created.returncode == 0, created.stderr
        keys.append(created.stdout.split()[-1])
    return cfg, ledger, keys[1]


@contextlib.contextmanager
def _serve_with_fds(cfg: Path, ledger: str, port: int, nofile: int) -> Iterator[subprocess.Popen[str]]:
    args = ["serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger]
    with spawn(*args, wrapper=["prlimit", f"--nofile={nofile}"]) as proc:
        yield proc


@pytest.mark.timeout(60)
def test_a_flood_at_256_descriptors_is_refused_and_the_backend_kept(fd_config: tuple[Path, str, str]) -> None:
    """``fedrouter serve`` under ``prlimit --nofile=256``: 300 connections are more descriptors
    than it has. Those over the cap (half the limit) are refused; the gateway keeps descriptors for
    its backend, so another tenant is answered throughout and the backend is never ejected."""
    cfg, ledger, key = fd_config
    port = free_port()
    auth = {"authorization": f"Bearer {key}"}
    with _serve_with_fds(cfg, ledger, port, 256) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout=30)
        with Wire(port) as other, contextlib.ExitStack() as stack:
            body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
            ask = request("POST", "/v1/chat/completions", body, auth)
            other.send(ask)
            assert other.answer().status == 200
            statuses: list[int | str] = []
            for i in range(300):
                try:
                    wire = stack.enter_context(Wire(port))
                    wire.send(request("GET", "/healthz"))
                    statuses.append(wire.answer().status)
                except OSError as exc:
                    statuses.append(type(exc).__name__)
                if i % 50 == 0:
                    other.send(ask)
                    assert other.answer().status == 200
            counts = Counter(statuses)
            # Served up to the cap (128, this client's connection included); beyond it 503, or,
            # when even the descriptor for that is missing, closed unanswered at accept (libuv).
            assert counts[200] == 127 and counts[503] >= 50, counts
            assert set(counts) <= {200, 503, "ConnectionError", "ConnectionResetError"}, counts
            other.send(ask)
            assert other.answer().status == 200
        for _ in range(20):  # and after the flood: the backend was never counted as failing
            assert (
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, headers=auth).status_code
                == 200
            )
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


# a percent-encoded inference path


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


# pipelined Expect


def test_a_pipelined_expect_gets_its_continue_only_once_its_turn_comes(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    slow = start_sim_backend("slowgen", tokens_per_s=10.0)
    gw = start_gateway([backend_entry(slow)])
    body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "x" * 2000}], "max_tokens": 1})
    head = request("POST", "/v1/chat/completions", b"", {**gw.auth(), "expect": "100-continue"})
    head = head.replace(b"content-length: 0", b"content-length: " + str(len(body)).encode())
    with Wire(gw.port) as wire, Wire(gw.port) as other:
        wire.send(chat(gw, 5, stream=True) + head)  # the second waits for its Continue
        status, _ = wire.head()
        assert status == 200
        pieces = []
        while piece := wire.chunk():  # nothing but events inside the stream's chunks
            assert piece.startswith(b"data: "), piece
            pieces.append(piece)
            _served(gw, other)
        assert pieces[-1] == DONE
        assert wire.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
        wire.send(body)
        assert wire.answer().json()["object"] == "chat.completion"


def test_http_1_0_gets_no_continue(sim: Sim, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway([backend_entry(sim)])
    body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
    head = request("POST", "/v1/chat/completions", b"", {**gw.auth(), "expect": "100-continue"}, "HTTP/1.0")
    head = head.replace(b"content-length: 0", b"content-length: " + str(len(body)).encode())
    with Wire(gw.port) as wire:
        wire.send(head)
        wire.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            wire._fill()
        wire.sock.settimeout(5)
        wire.send(body)
        assert wire.answer().json()["object"] == "chat.completion"


# smaller edge defects


@pytest.fixture
def faulty(sim: Sim, start_gateway: Callable[..., Gateway]) -> Gateway:
    """A gateway whose app has two routes that fail: before their answer, and halfway through it."""
    gw = start_gateway([backend_entry(sim)])

    async def before() -> None:
        raise RuntimeError("a fault before the answer")

    async def halfway() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"first part"
            raise RuntimeError("a fault halfway through the answer")

        return StreamingResponse(parts())

    gw.app.add_api_route("/faulty/before", before)
    gw.app.add_api_route("/faulty/halfway", halfway)
    return gw


def test_a_500_closes_the_connection(faulty: Gateway) -> None:
    with Wire(faulty.port) as wire:
        wire.send(request("GET", "/faulty/before") + request("GET", "/healthz"))
        answer = wire.answer()
        assert assert_openai_error(answer, 500)["type"] == "server_error"
        assert answer.headers["connection"] == "close"
        assert wire.closed_by_server(), "the pipelined request after a 500 must not be answered"


def test_a_fault_after_the_answer_began_aborts_the_connection(faulty: Gateway) -> None:
    with Wire(faulty.port) as wire:
        wire.send(request("GET", "/faulty/halfway") + request("GET", "/healthz"))
        status, headers = wire.head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert wire.chunk() == b"first part"
        with pytest.raises(ConnectionError):
            wire.chunk()  # no terminator, and no next answer read as this one's end


def test_head_on_a_get_route_is_answered_without_a_body(sim: Sim, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway([backend_entry(sim)])
    with Wire(gw.port) as wire:
        wire.send(request("HEAD", "/healthz") + request("GET", "/healthz"))
        head = wire.answer(head_only=True)
        assert head.status == 200 and int(head.headers["content-length"]) == len(b'{"status":"ok"}')
        assert wire.answer().json() == {"status": "ok"}  # no body byte came between the two


def test_http_1_0_keep_alive_is_said_when_honoured(sim: Sim, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway([backend_entry(sim)])
    with Wire(gw.port) as wire:
        for data in (
            request("GET", "/healthz", headers={"connection": "keep-alive"}, version="HTTP/1.0"),
            chat(gw, 1, extra={"connection": "keep-alive"}, version="HTTP/1.0"),
        ):
            wire.send(data)
            answer = wire.answer()
            assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
        wire.send(request("GET", "/healthz", version="HTTP/1.0"))
        assert wire.answer().headers["connection"] == "close"
        assert wire.closed_by_server()


def test_http_0_9_is_refused_not_answered(sim: Sim, start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway([backend_entry(sim)])
    with Wire(gw.port) as wire:
        wire.send(b"GET /healthz\r\n\r\n")
        answer = wire.answer()
        assert assert_openai_error(answer, 505)["message"] == "HTTP/0.9 is not supported."
        assert b"status" not in answer.body and wire.closed_by_server()


def test_whitespace_and_chunk_extensions_count_against_the_limits(
    sim: Sim, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway([backend_entry(sim)], limits={"max_body_bytes": 1000})
    with Wire(gw.port) as wire:
        wire.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad:")
        for _ in range(3):  # whitespace the parser skips, in reads of their own (the count runs per read)
            time.sleep(0.05)
            wire.send(b" " * 30_000)
        wire.send(b"p\r\n\r\n")
        assert assert_openai_error(wire.answer(), 431)["message"].startswith("The request line and headers exceed")
        assert wire.closed_by_server()
    with Wire(gw.port) as wire:  # in one go
        wire.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad:" + b" " * 70_000)
        assert assert_openai_error(wire.answer(), 431)["message"].startswith("The request line and headers exceed")
    head = request("POST", "/v1/chat/completions", headers={**gw.auth(), "transfer-encoding": "chunked"})
    with Wire(gw.port) as wire:
        wire.send(head.replace(b"content-length: 0\r\n", b""))
        wire.send(b"1;ext=")
        for _ in range(8):  # a chunk whose extension never ends: no body byte, all framing
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                wire.send(b"e" * 10_000)
        assert assert_openai_error(wire.answer(), 413)["code"] == "request_too_large"
