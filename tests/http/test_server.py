"""fedrouter's HTTP/1.1 server on the wire: framing, keep-alive, pipelining, limits, malformed
input, streaming, graceful stop and worker processes, over real sockets against a real gateway."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway, Sim, backend_entry
from tests.openai_schema import validate
from tests.processes import free_port, run, spawn, wait_ready
from tests.servers import wait_for

pytestmark = pytest.mark.timeout(15)

TIMEOUT = 5.0
DONE = b"data: [DONE]\n\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes]

    def json(self) -> Any:
        return orjson.loads(self.body)


class Wire:
    """One raw client connection: writes exact bytes, reads answers framed by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"the server closed the connection; unread: {self.buf!r}")
        self.buf += data

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        out, self.buf = self.buf.split(sep, 1)
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, dict[str, str]]:
        lines = self.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        return int(status), headers

    def chunk(self) -> bytes:
        """One piece of a chunked body; b"" for the last."""
        size = int(self.read_until(b"\r\n"), 16)
        data = self.read_exact(size)
        assert self.read_exact(2) == b"\r\n", "a chunk must end with CRLF"
        return data

    def answer(self, *, head_only: bool = False) -> Answer:
        status, headers = self.head()
        chunks: list[bytes] = []
        if head_only:
            body = b""
        elif headers.get("transfer-encoding") == "chunked":
            assert "content-length" not in headers
            while piece := self.chunk():
                chunks.append(piece)
            body = b"".join(chunks)
        else:
            body = self.read_exact(int(headers["content-length"]))
        return Answer(status, headers, body, chunks)

    def closed_by_server(self) -> bool:
        """True once the server has closed its end (and sent nothing more)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, version: str = "HTTP/1.1"
) -> bytes:
    lines = [f"{method} {path} {version}", "host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat(
    gw: Gateway,
    max_tokens: int = 2,
    *,
    stream: bool = False,
    extra: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    body = orjson.dumps(
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": stream}
    )
    return request(
        "POST",
        "/v1/chat/completions",
        body,
        {**gw.auth(), "content-type": "application/json", **(extra or {})},
        version,
    )


def assert_openai_error(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status
    assert answer.headers["content-type"].startswith("application/json")
    payload = answer.json()
    validate(payload, "ErrorResponse")
    assert set(payload["error"]) >= {"message", "type", "code", "param"}
    return payload["error"]


@pytest.fixture
def sim(start_sim_backend: Callable[..., Sim]) -> Sim:
    return start_sim_backend("dc1")


@pytest.fixture
def gw(sim: Sim, start_gateway: Callable[..., Gateway]) -> Gateway:
    gateway = start_gateway([backend_entry(sim)])
    gateway.sims = {"dc1": sim}
    return gateway


@pytest.fixture
def small(sim: Sim, start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway([backend_entry(sim)], limits={"max_body_bytes": 1000})


@pytest.fixture
def slow_gw(start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]) -> Gateway:
    """A gateway in front of a backend that streams five tokens a second."""
    sim = start_sim_backend("slowgen", tokens_per_s=5.0)
    gateway = start_gateway([backend_entry(sim)])
    gateway.sims = {"slowgen": sim}
    return gateway


# keep-alive and pipelining


def test_keep_alive_serves_several_requests_on_one_socket(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(chat(gw, 3))
        first = wire.answer()
        assert first.status == 200 and "connection" not in first.headers
        assert first.json()["usage"]["completion_tokens"] == 3
        assert first.headers["x-request-id"].startswith("req_")
        sent = parsedate_to_datetime(first.headers["date"])
        assert abs(sent.timestamp() - time.time()) < 5

        wire.send(request("GET", "/healthz"))
        health = wire.answer()
        assert (health.status, health.json()) == (200, {"status": "ok"})
        assert "date" in health.headers

        wire.send(request("GET", "/v1/models", headers=gw.auth()))
        models = wire.answer()
        assert models.status == 200 and [m["id"] for m in models.json()["data"]] == ["m1"]

        wire.send(chat(gw, 1))
        again = wire.answer()
        assert again.status == 200 and again.json()["usage"]["completion_tokens"] == 1
        assert again.headers["x-request-id"] != first.headers["x-request-id"]
        assert not wire.buf
    assert gw.usage()["totals"]["requests"] == 2


def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(chat(gw, 4) + chat(gw, 1) + request("GET", "/healthz"))
        answers = [wire.answer() for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert [a.json()["usage"]["completion_tokens"] for a in answers[:2]] == [4, 1]
        assert answers[2].json() == {"status": "ok"}
        ids = [a.headers["x-request-id"] for a in answers[:2]]
        assert int(ids[0][-8:], 16) + 1 == int(ids[1][-8:], 16)
        wire.send(chat(gw, 2))  # the connection reads again once the pipeline is drained
        assert wire.answer().status == 200


# connection close


@pytest.mark.parametrize("streaming", [False, True])
def test_connection_close_is_honoured(gw: Gateway, streaming: bool) -> None:
    with Wire(gw.port) as wire:
        wire.send(chat(gw, 2, stream=streaming, extra={"connection": "close"}))
        answer = wire.answer()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert answer.body.endswith(DONE) if streaming else answer.json()["object"] == "chat.completion"
        assert wire.closed_by_server()


@pytest.mark.parametrize("path", ["/healthz", "/v1/chat/completions"])
def test_http_1_0_request_gets_one_answer_then_close(gw: Gateway, path: str) -> None:
    data = request("GET", path, version="HTTP/1.0") if path == "/healthz" else chat(gw, version="HTTP/1.0")
    with Wire(gw.port) as wire:
        wire.send(data)
        answer = wire.answer()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert int(answer.headers["content-length"]) == len(answer.body) > 0
        assert wire.closed_by_server()


def test_http_1_0_stream_runs_to_the_close_without_chunks(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(chat(gw, 3, stream=True, version="HTTP/1.0"))
        status, headers = wire.head()
        assert status == 200 and headers["connection"] == "close"
        assert "transfer-encoding" not in headers and "content-length" not in headers
        with contextlib.suppress(ConnectionError):
            while True:
                wire._fill()
        body = wire.buf
        assert body.startswith(b"data: {") and body.endswith(DONE)


def test_expect_100_continue_is_answered_before_the_body(gw: Gateway) -> None:
    body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "x" * 2000}], "max_tokens": 1})
    head = request("POST", "/v1/chat/completions", b"", {**gw.auth(), "expect": "100-continue"})
    head = head.replace(b"content-length: 0", b"content-length: " + str(len(body)).encode())
    with Wire(gw.port) as wire:
        wire.send(head)  # and no body until the server says so
        assert wire.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
        wire.send(body)
        answer = wire.answer()
        assert answer.status == 200 and answer.json()["object"] == "chat.completion"


def test_oversized_headers_are_431_and_close(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(request("GET", "/healthz", headers={"x-padding": "p" * 70_000}))
        answer = wire.answer()
        assert assert_openai_error(answer, 431)["message"].startswith("The request line and headers exceed")
        assert wire.closed_by_server()


# request body limits


def test_content_length_over_the_limit_is_413_and_closes(small: Gateway) -> None:
    body = b'{"model": "m1", "messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}'
    with Wire(small.port) as wire:
        wire.send(request("POST", "/v1/chat/completions", body, small.auth()))
        answer = wire.answer()
        error = assert_openai_error(answer, 413)
        assert "limit of 1000 bytes" in error["message"]
        assert answer.headers["connection"] == "close" and answer.headers["x-request-id"].startswith("req_")
        assert wire.closed_by_server()
    usage = small.usage()
    assert usage["totals"]["requests"] == 0 and usage["recent"] == []


@pytest.mark.parametrize("expect", [False, True])
def test_a_content_length_over_the_limit_is_refused_before_its_body(small: Gateway, expect: bool) -> None:
    """The size is in the head: the 413 comes at once, with no 100 Continue inviting the body."""
    headers = {**small.auth(), **({"expect": "100-continue"} if expect else {})}
    head = request("POST", "/v1/chat/completions", b"", headers)
    head = head.replace(b"content-length: 0", b"content-length: 99999999999")
    with Wire(small.port) as wire:
        started = time.monotonic()
        wire.send(head)  # and never a byte of the body
        answer = wire.answer()
        assert time.monotonic() - started < 2.0
        assert "limit of 1000 bytes" in assert_openai_error(answer, 413)["message"]
        assert answer.headers["x-request-id"].startswith("req_") and answer.headers["x-should-retry"] == "false"
        assert wire.closed_by_server()


def test_an_unparseable_request_is_answered_with_a_request_id(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n{}")
        answer = wire.answer()
        assert_openai_error(answer, 400)
        assert answer.headers["x-request-id"].startswith("req_") and answer.headers["connection"] == "close"


def test_chunked_body_over_the_limit_is_413_and_closes(small: Gateway) -> None:
    head = request("POST", "/v1/chat/completions", headers={**small.auth(), "transfer-encoding": "chunked"})
    head = head.replace(b"content-length: 0\r\n", b"")
    with Wire(small.port) as wire:
        wire.send(head)
        for _ in range(6):
            wire.send(b"fa\r\n" + b"y" * 250 + b"\r\n")
        wire.send(b"0\r\n\r\n")
        answer = wire.answer()
        assert "limit of 1000 bytes" in assert_openai_error(answer, 413)["message"]
        assert answer.headers["connection"] == "close"
        assert wire.closed_by_server()
    assert small.usage()["recent"] == []


def test_oversized_body_on_an_asgi_route_is_413_and_closes(small: Gateway) -> None:
    with Wire(small.port) as wire:
        wire.send(request("POST", "/admin/v1/keys", b'{"tenant": "' + b"a" * 1200 + b'"}', small.admin()))
        answer = wire.answer()
        assert_openai_error(answer, 413)
        assert wire.closed_by_server()


# malformed input


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\x00\x01\x02 not http at all\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # a TLS ClientHello
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon in this header\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: ten\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    ],
)
def test_malformed_request_is_400_and_closes(gw: Gateway, data: bytes) -> None:
    with Wire(gw.port) as wire:
        wire.send(data)
        answer = wire.answer()
        assert assert_openai_error(answer, 400)["type"] == "invalid_request_error"
        assert answer.headers["connection"] == "close"
        assert wire.closed_by_server()
    with Wire(gw.port) as other:  # the server is unharmed
        other.send(chat(gw, 1))
        assert other.answer().status == 200


def test_garbage_pipelined_behind_a_request_is_refused_after_its_answer(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(chat(gw, 1))
        assert wire.answer().status == 200
        wire.send(chat(gw, 2) + b"\x00\x01 nonsense\r\n\r\n")  # answers leave in the order asked
        answer = wire.answer()
        assert answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 2
        assert_openai_error(wire.answer(), 400)
        assert wire.closed_by_server()
    assert gw.usage()["totals"]["requests"] == 2


def test_garbage_mid_stream_does_not_corrupt_the_stream(slow_gw: Gateway) -> None:
    with Wire(slow_gw.port) as wire:
        wire.send(chat(slow_gw, 4, stream=True))
        status, headers = wire.head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert wire.chunk().startswith(b"data: ")
        wire.send(b"\x00\x01 nonsense\r\n\r\n")
        pieces = []
        while piece := wire.chunk():
            assert piece.startswith(b"data: "), piece
            pieces.append(piece)
        assert pieces[-1] == DONE
        assert_openai_error(wire.answer(), 400)
        assert wire.closed_by_server()


def test_upgrade_request_is_refused_and_not_served(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(
            chat(
                gw,
                2,
                extra={
                    "connection": "Upgrade, HTTP2-Settings",
                    "upgrade": "h2c",
                    "http2-settings": "AAMAAABkAARAAAAAAAIAAAAA",
                },
            )
        )
        assert "upgrades are not supported" in assert_openai_error(wire.answer(), 400)["message"]
        assert wire.closed_by_server()
    time.sleep(0.2)  # a request run despite the refusal would reach the backend by now
    assert gw.sims["dc1"].stats()["requests"] == 0
    assert gw.usage()["recent"] == []


# chunked request bodies


def test_chunked_request_body_sent_slowly_is_accepted(gw: Gateway) -> None:
    body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3})
    head = request("POST", "/v1/chat/completions", headers={**gw.auth(), "transfer-encoding": "chunked"})
    with Wire(gw.port) as wire:
        wire.send(head.replace(b"content-length: 0\r\n", b""))
        for i in range(0, len(body), 17):
            piece = body[i : i + 17]
            wire.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            time.sleep(0.02)
        wire.send(b"0\r\n\r\n")
        answer = wire.answer()
        assert answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 3
        assert gw.sims["dc1"].last_request()["body"]["messages"][0]["content"] == "hello there"
        wire.send(chat(gw, 1))  # and the connection is still in step
        assert wire.answer().status == 200


# streaming


def test_stream_is_chunked_and_terminated(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(chat(gw, 4, stream=True))
        answer = wire.answer()  # reads chunk by chunk, up to the terminating 0\r\n\r\n
        assert answer.status == 200
        assert answer.headers["transfer-encoding"] == "chunked"
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["x-request-id"].startswith("req_")
        assert answer.chunks[-1] == DONE and all(answer.chunks)
        frames = [f for f in answer.body.split(b"\n\n") if f]
        assert all(f.startswith(b"data: ") for f in frames)
        words = "".join(orjson.loads(f[6:])["choices"][0]["delta"].get("content") or "" for f in frames[:-1])
        assert len(words.split()) == 4
        assert not wire.buf  # nothing after the terminator
        wire.send(request("GET", "/healthz"))
        assert wire.answer().status == 200


def test_client_leaving_mid_stream_is_billed_as_disconnected(slow_gw: Gateway) -> None:
    with Wire(slow_gw.port) as wire:
        wire.send(chat(slow_gw, 50, stream=True))
        status, headers = wire.head()
        assert status == 200
        assert wire.chunk().startswith(b"data: ")
        request_id = headers["x-request-id"]

    def row() -> dict[str, Any] | None:
        rows = [r for r in slow_gw.usage("acme")["recent"] if r["request_id"] == request_id]
        return rows[0] if rows else None

    record = wait_for(row)
    assert record is not None and record["outcome"] == "client_disconnected"
    assert record["output_tokens"] < 50
    assert wait_for(lambda: slow_gw.sims["slowgen"].stats()["cancelled_streams"] == 1)
    resp = httpx.post(
        slow_gw.url + "/v1/chat/completions",
        headers=slow_gw.auth(),
        timeout=TIMEOUT,
        json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    )
    assert resp.status_code == 200


# HEAD and ASGI routes


def test_head_gets_headers_and_no_body(gw: Gateway) -> None:
    with Wire(gw.port) as wire:
        wire.send(request("HEAD", "/healthz"))
        head = wire.answer(head_only=True)
        # FastAPI answers HEAD on a GET route with 405; either way the head says how long the body
        # is and the body stays home.
        assert head.status in (200, 405) and int(head.headers["content-length"]) > 0
        assert head.headers["content-type"] == "application/json" and "transfer-encoding" not in head.headers
        # Any body byte would be read as the start of the next answer here.
        wire.send(request("GET", "/healthz"))
        assert wire.answer().json() == {"status": "ok"}
        assert not wire.buf


def test_admin_route_with_a_query_string(gw: Gateway) -> None:
    client = gw.client()
    for _ in range(2):
        client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    with Wire(gw.port) as wire:
        wire.send(request("GET", "/admin/v1/usage?limit=1&tenant=acme", headers=gw.admin()))
        one = wire.answer()
        wire.send(request("GET", "/admin/v1/usage?limit=5", headers=gw.admin()))
        five = wire.answer()
    assert one.status == five.status == 200
    assert len(one.json()["recent"]) == 1 and len(five.json()["recent"]) == 2
    with Wire(gw.port) as wire:  # a streamed ASGI answer, then the connection carries on
        wire.send(
            request("GET", "/admin/v1/usage/export?format=jsonl&from=2000-01-01&to=2100-01-01", headers=gw.admin())
        )
        export = wire.answer()
        assert export.status == 200 and export.headers["transfer-encoding"] == "chunked"
        assert len(export.body.splitlines()) == 2
        wire.send(request("GET", "/healthz"))
        assert wire.answer().status == 200
    resp = httpx.get(gw.url + "/admin/v1/usage", params={"limit": 1}, headers=gw.admin(), timeout=TIMEOUT)
    assert resp.status_code == 200 and len(resp.json()["recent"]) == 1
    assert httpx.get(gw.url + "/admin/v1/usage?limit=1", timeout=TIMEOUT).status_code == 401


# graceful stop


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(request("GET", "/healthz"))
            return sock.recv(1) == b""  # accepted just before the listener closed, then closed unanswered
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def test_stop_lets_the_stream_in_flight_finish(slow_gw: Gateway) -> None:
    with Wire(slow_gw.port) as wire, Wire(slow_gw.port) as idle:
        idle.send(request("GET", "/healthz"))
        assert idle.answer().status == 200
        wire.send(chat(slow_gw, 8, stream=True))  # about 1.6 s at five tokens a second
        status, headers = wire.head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        slow_gw.server.stop()
        assert wait_for(lambda: _refused(slow_gw.port), 2.0), "new connections must be refused once stopping"
        assert idle.closed_by_server(), "idle keep-alive connections are closed at once"
        pieces = []
        while piece := wire.chunk():
            pieces.append(piece)
        assert pieces[-1] == DONE
        assert len([p for p in pieces if b'"content":"' in p]) >= 8
        assert wire.closed_by_server()
    slow_gw.thread.join(5)
    assert not slow_gw.thread.is_alive()
    slow_gw.server.stop()  # a second stop, after the end, is harmless


# worker processes


@pytest.fixture
def worker_config(start_sim_backend: Callable[..., Sim], tmp_path: Path) -> tuple[Path, str, str]:
    sim = start_sim_backend("up")
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(f"""
backends:
  - name: up
    class: datacenter
    type: openai
    base_url: {sim.base_url}
    models: [m1]
    price: {{input: 1.0, output: 2.0}}
    energy: {{joules_per_token: 0.5}}
tenants:
  - name: acme
""")
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    created = run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    return cfg, ledger, created.stdout.split()[-1]


@pytest.mark.timeout(45)  # two spawned interpreters importing the app
def test_two_workers_share_the_port_and_stop_on_sigterm(worker_config: tuple[Path, str, str]) -> None:
    cfg, ledger, key = worker_config
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger, "--workers", "2") as proc:
        wait_ready(url + "/healthz", proc, timeout=30)
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: either worker may take it
        with httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {key}"}, limits=fresh, timeout=TIMEOUT
        ) as client:
            # Ready means one worker answers; the other may still be importing. Wait for both.
            ready: set[str] = set()
            deadline = time.monotonic() + 15
            while len(ready) < 2 and time.monotonic() < deadline:
                ready.add(client.get("/healthz").headers["x-request-id"][:-8])
            assert len(ready) == 2, "the second worker never answered"

            def complete(_: int) -> httpx.Response:
                return client.post(
                    "/v1/chat/completions",
                    json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
                )

            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(complete, range(40)))
        assert [r.status_code for r in answers] == [200] * 40
        request_ids = [r.headers["x-request-id"] for r in answers]
        assert all(re.fullmatch(r"req_[0-9a-f]{16}[0-9a-f]{8}", rid) for rid in request_ids)
        per_worker = Counter(rid[:-8] for rid in request_ids)
        # Each worker listens on its own socket and the kernel spreads connections by a hash of
        # their addresses: 40 connections split fewer than 6 to 34 once in about a million runs.
        assert len(per_worker) == 2 and min(per_worker.values()) >= 6, per_worker
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)  # raises TimeoutExpired (and _spawn kills it) if it hangs
        assert proc.returncode == 0, err
    assert "requests:      40" in run("usage", "--tenant", "acme", "--ledger", ledger).stdout


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its parent (now init) has not read its status


@pytest.mark.timeout(60)
def test_workers_end_when_their_parent_is_killed(worker_config: tuple[Path, str, str]) -> None:
    """SIGKILL leaves the parent no chance to pass anything on: each worker still stops (on
    Linux, by the parent-death signal) rather than serving the port on its own for ever."""
    cfg, ledger, _ = worker_config
    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger, "--workers", "2") as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout=30)
        children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2
        proc.kill()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "a worker outlived its parent"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing serves the port any more


def test_the_app_also_serves_under_uvicorn(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    """The FastAPI app stays a plain ASGI app (its fast path included) for those who run it under
    another server: the same answers, streams and errors as under fedrouter's own server."""
    sim = start_sim_backend("uv1")
    with start_gateway([backend_entry(sim)], [{"name": "acme"}], server="uvicorn") as gw:
        port, key = gw.port, gw.keys["acme"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        done = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert done.object == "chat.completion" and done.usage is not None and done.usage.completion_tokens == 3
        chunks = list(
            client.chat.completions.create(
                model="m1",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        raw = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert raw.headers["x-request-id"].startswith("req_") and raw.headers["x-fedrouter-backend"] == "uv1"


def test_idle_connections_are_closed(
    start_sim_backend: Callable[..., Sim], start_gateway: Callable[..., Gateway]
) -> None:
    """A kept-alive connection left silent, or a request never finished, does not hold a socket
    for ever; a connection in use is left alone."""
    sim = start_sim_backend("idle1")
    with start_gateway([backend_entry(sim)], [{"name": "acme"}], options={"idle_s": 0.6}) as gw:
        port = gw.port
        with Wire(port) as kept, Wire(port) as unfinished, Wire(port) as busy:
            kept.send(request("GET", "/healthz"))
            assert kept.answer().status == 200
            unfinished.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
            for _ in range(8):  # busy keeps talking, 0.25 s apart: it stays open past idle_s
                busy.send(request("GET", "/healthz"))
                assert busy.answer().status == 200
                time.sleep(0.25)
            assert kept.closed_by_server() and unfinished.closed_by_server()
            busy.send(request("GET", "/healthz"))
            assert busy.answer().status == 200
