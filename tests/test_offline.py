"""No network but the configured backends. ``fedrouter serve`` runs under strace, which records
every connect and send with an address made by any of its threads (uvloop's and litellm's
included); the gateway starts, serves an OpenAI-compatible backend and a litellm one (Anthropic's
API, priced from litellm's bundled map), counts the tokens of a stream without usage, and stops.
Every address it reached must be a loopback one. ``.ci/run`` makes sure strace is installed."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import backend_entry
from tests.processes import FEDROUTER, free_port, wait_ready
from tests.servers import ADMIN_KEY

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")

ANTHROPIC_MODEL = "claude-haiku-4-5-20251001"  # in the price map of the litellm this runs with
_INET = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"')


def destinations(trace: str) -> set[tuple[str, int]]:
    """(address, port) of every IPv4 or IPv6 connect or send in an strace log."""
    found = {(addr, int(port)) for port, addr in _INET.findall(trace)}
    return found | {(addr, int(port)) for port, addr in _INET6.findall(trace)}


def test_destinations_are_parsed_from_strace_lines() -> None:
    trace = (
        '12 connect(7, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("140.82.112.3")}, 16) = 0\n'
        '13 sendto(9, "x", 1, MSG_NOSIGNAL, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2001:4860::8888", &sin6_addr), sin6_scope_id=0}, 28) = 1\n'
        '14 connect(3, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0\n'
    )
    assert destinations(trace) == {("140.82.112.3", 443), ("2001:4860::8888", 53)}
    assert [loopback(a) for a in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "2001:4860::8888")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _stop_tracee(strace: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the gateway strace started (its only child), as an operator would stop it."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it has exited already
        for child in Path(f"/proc/{strace.pid}/task/{strace.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGTERM)


@pytest.mark.timeout(120)  # the traced interpreter runs a few times slower
def test_the_gateway_reaches_nothing_but_its_backends(start_sim_backend, tmp_path: Path) -> None:
    local = start_sim_backend("local", ["m1"], omit_usage=True)  # its streams carry no usage: counted here
    anthropic = start_sim_backend("anth", [ANTHROPIC_MODEL])
    cfg = tmp_path / "fed.yaml"
    litellm_entry = {
        "name": "anth",
        "class": "datacenter",
        "type": "litellm",
        "base_url": f"http://127.0.0.1:{anthropic.port}",
        "api_key": "env:ANTH_KEY",
        "models": {"claude-haiku": f"anthropic/{ANTHROPIC_MODEL}"},
        "energy": {"joules_per_token": 0.5},
    }  # no price: litellm's map gives it
    cfg.write_text(yaml.safe_dump({"backends": [backend_entry(local), litellm_entry], "tenants": [{"name": "acme"}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    trace = tmp_path / "strace.log"
    env = {"FEDROUTER_ADMIN_KEY": ADMIN_KEY, "ANTH_KEY": "sk-ant-test", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    command = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=connect,sendto,sendmsg,sendmmsg",
        "-e",
        "signal=none",
        "-o",
        str(trace),
        *FEDROUTER,
        "serve",
        "--config",
        str(cfg),
        "--port",
        str(port),
        "--ledger",
        f"sqlite:///{tmp_path / 'l.db'}",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path) as strace:
        try:
            wait_ready(url + "/healthz", strace, timeout=60)  # type: ignore[arg-type]
            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            key = httpx.post(url + "/admin/v1/keys", headers=admin, json={"tenant": "acme"}, timeout=10).json()["key"]
            client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
            hi = [{"role": "user", "content": "Say hello"}]
            for model in ("m1", "claude-haiku"):
                assert client.chat.completions.create(model=model, messages=hi, max_tokens=5).choices[0].message
                chunks = list(
                    client.chat.completions.create(
                        model=model, messages=hi, max_tokens=5, stream=True, stream_options={"include_usage": True}
                    )
                )
                assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
            client.close()
            usage = httpx.get(url + "/admin/v1/usage", params={"tenant": "acme"}, headers=admin, timeout=10).json()
            by_backend = {(row["backend"], row["stream"]): row for row in usage["recent"]}
            assert by_backend["anth", False]["cost_usd"] > 0  # priced from litellm's bundled map
            assert by_backend["local", True]["tokens_source"] == "counted"
        finally:
            _stop_tracee(strace)
            _, err = strace.communicate(timeout=60)
        assert strace.returncode == 0, err.decode(errors="replace")[-2000:]

    reached = destinations(trace.read_text())
    # The trace sees the gateway's own connections, so a trace that missed them fails here.
    assert {local.port, anthropic.port} <= {p for _, p in reached}
    elsewhere = {(a, p) for a, p in reached if not loopback(a)}
    assert elsewhere == set(), f"the gateway reached beyond loopback: {sorted(elsewhere)}"
