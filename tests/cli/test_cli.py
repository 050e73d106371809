"""The fedrouter command, run as a user runs it: real processes, real ports."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import free_port, run, spawn, wait_ready


@pytest.fixture
def sim_and_config(start_sim_backend, tmp_path):
    sim = start_sim_backend("up")
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(f"""
backends:
  - name: up
    class: sovereign
    type: openai
    base_url: {sim.base_url}
    models: [m1]
    zone: FR
    price: {{input: 1.0, output: 2.0}}
    energy: {{joules_per_token: 0.5}}
tenants:
  - name: acme
""")
    return sim, cfg, f"sqlite:///{tmp_path / 'ledger.db'}"


def test_keys_serve_and_usage(sim_and_config):
    _, cfg, ledger = sim_and_config
    created = run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("fr-") and len(key) > 40
    assert key not in Path(ledger.removeprefix("sqlite:///")).read_bytes().decode("latin-1"), "keys are stored hashed"

    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        client.close()
    usage = run("usage", "--tenant", "acme", "--ledger", ledger)
    assert usage.returncode == 0
    assert "requests:      3" in usage.stdout
    assert "output tokens: 12" in usage.stdout


def test_serve_with_two_workers(sim_and_config):
    _, cfg, ledger = sim_and_config
    key = run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", ledger).stdout.split()[-1]
    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger, "--workers", "2") as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout=30)
        for _ in range(6):
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
            )
            assert r.status_code == 200
    assert "requests:      6" in run("usage", "--tenant", "acme", "--ledger", ledger).stdout


def test_workers_without_shared_state_refuse_limits(sim_and_config, tmp_path):
    """Each of N workers without --state would allow a limit or budget in full: refused before
    any worker starts, naming what would not hold."""
    _, cfg, ledger = sim_and_config
    limited = tmp_path / "limited.yaml"
    limited.write_text(cfg.read_text() + "    budgets: [{metric: usd, period: daily, hard: 1.0}]\n")
    port = free_port()
    refused = run("serve", "--config", str(limited), "--port", str(port), "--ledger", ledger, "--workers", "2")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "tenant acme (budgets)" in refused.stderr and "--state redis://" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    # A key's own limits count too, from the key store.
    created = run("keys", "create", "--tenant", "acme", "--rpm", "5", "--config", str(cfg), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    refused = run("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger, "--workers", "2")
    assert refused.returncode == 2 and "of tenant acme (rate limits)" in refused.stderr
    with socket.socket() as sock:  # and nothing was left listening
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    zero = run("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger, "--workers", "0")
    assert zero.returncode == 2 and "--workers 0: give at least 1" in zero.stderr


@pytest.mark.timeout(60)  # two spawned interpreters importing the app
def test_two_workers_with_shared_state_hold_one_rate_limit(sim_and_config, tmp_path, monkeypatch):
    """With --state, a limit holds across the workers: 5 requests a minute in all, not 5 each."""
    _, cfg, ledger = sim_and_config
    limited = tmp_path / "limited.yaml"
    limited.write_text(cfg.read_text() + "    limits: {requests_per_minute: 5}\n")
    key = run("keys", "create", "--tenant", "acme", "--config", str(limited), "--ledger", ledger).stdout.split()[-1]
    monkeypatch.setenv("FEDROUTER_STATE_PREFIX", f"fedrouter-test:{time.time_ns()}:")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with spawn(
        "serve",
        "--config",
        str(limited),
        "--port",
        str(port),
        "--ledger",
        ledger,
        "--workers",
        "2",
        "--state",
        "redis://127.0.0.1:6379/0",
    ) as proc:
        wait_ready(url + "/healthz", proc, timeout=30)
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: either worker may take it
        with httpx.Client(base_url=url, limits=fresh, timeout=10) as client:
            workers: set[str] = set()
            deadline = time.monotonic() + 20
            while len(workers) < 2 and time.monotonic() < deadline:  # both workers up
                workers.add(client.get("/healthz").headers["x-request-id"][:-8])
            assert len(workers) == 2
            answers = [
                client.post(
                    "/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
                )
                for _ in range(20)
            ]
    assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 15
    # Both workers answered (20 connections all to one worker: twice in a million runs).
    assert len({r.headers["x-request-id"][:-8] for r in answers}) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["keys", "create", "--tenant", "ghost"], "unknown tenant 'ghost'"),
        (["serve"], "unknown key 'backendz'"),
        (["check-config"], "unknown key 'backendz'"),
    ],
)
def test_cli_errors_are_one_clear_line_and_nonzero(tmp_path, sim_and_config, args, fragment):
    _, cfg, ledger = sim_and_config
    if fragment.startswith("unknown key"):
        cfg = tmp_path / "typo.yaml"
        cfg.write_text("backendz: []\n")
    full = [*args, str(cfg)] if args == ["check-config"] else [*args, "--config", str(cfg)]
    result = run(*full, "--ledger", ledger) if args[0] == "keys" else run(*full)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_warns_of_a_model_without_a_price(sim_and_config, tmp_path):
    _, cfg, _ = sim_and_config
    assert run("check-config", str(cfg)).stderr == ""  # its backend declares a price
    unpriced = tmp_path / "unpriced.yaml"
    unpriced.write_text(cfg.read_text().replace("    price: {input: 1.0, output: 2.0}\n", ""))
    result = run("check-config", str(unpriced))
    assert result.returncode == 0 and result.stdout.strip() == f"{unpriced}: ok (1 backend, 1 tenant)"
    assert result.stderr.startswith("warning: backend up: model m1 (m1) has no price")
    assert "recorded at cost 0" in result.stderr and len(result.stderr.splitlines()) == 1


def test_unsupported_ledger_url_is_refused(sim_and_config):
    _, cfg, _ = sim_and_config
    result = run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", "mysql://x/y")
    assert result.returncode == 2 and "only sqlite:///PATH is supported" in result.stderr


def test_demo_starts_and_routes(tmp_path):
    port = free_port()
    with spawn("demo", "--port", str(port), "--ledger", f"sqlite:///{tmp_path}/d.db", cwd=tmp_path) as proc:
        assert wait_ready(f"http://127.0.0.1:{port}/healthz", proc) < 10
        banner = [proc.stdout.readline() for _ in range(7)]  # type: ignore[union-attr]
    tenants = {line.split()[1] for line in banner if line.strip().startswith("tenant ")}
    assert {"demo", "eu-gov", "green", "speedy", "frugal"} == tenants


def test_demo_policies_route_differently(tmp_path):
    """Each demo tenant's policy ranks the demo backends as it promises. Checked on the dry-run
    ranking, which has no exploration draw (a real request may try an unmeasured backend first)."""
    port = free_port()
    with spawn("demo", "--port", str(port), "--ledger", f"sqlite:///{tmp_path}/d.db", cwd=tmp_path) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        keys: dict[str, str] = {}
        admin_key = ""
        while len(keys) < 5:  # the banner is printed before the server starts
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if "admin key" in line:
                admin_key = line.split()[-1]
            if line.strip().startswith("tenant "):
                keys[line.split()[1]] = line.split()[-1]
        top = {}
        for tenant in ("eu-gov", "green", "frugal"):
            ranking = httpx.get(
                f"http://127.0.0.1:{port}/admin/v1/route",
                params={"model": "llama-3.1-8b-instruct", "tenant": tenant},
                headers={"authorization": f"Bearer {admin_key}"},
                timeout=10,
            ).json()
            top[tenant] = ranking["models"][0]["candidates"][0]["backend"]
        served = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"authorization": f"Bearer {keys['eu-gov']}"},
            json={"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
            timeout=10,
        )
    assert served.headers["x-fedrouter-backend"] == "eu-sovereign"  # its only admissible backend
    assert top["eu-gov"] == "eu-sovereign"
    assert top["green"] == "volunteer-berlin"  # lowest joules per token, lowest carbon
    assert top["frugal"] == "volunteer-berlin"  # free


@pytest.mark.parametrize(
    ("key", "fragment"), [("", "is set but empty"), ("   ", "is set but empty"), ("short-key", "9 characters")]
)
def test_serve_refuses_an_empty_or_short_admin_key(sim_and_config, key, fragment):
    _, cfg, ledger = sim_and_config
    args = ("serve", "--config", str(cfg), "--port", str(free_port()), "--ledger", ledger)
    result = run(*args, env={"FEDROUTER_ADMIN_KEY": key})
    assert result.returncode == 2
    assert fragment in result.stderr and "FEDROUTER_ADMIN_KEY" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_serve_without_an_admin_key_says_the_admin_api_is_off(sim_and_config, monkeypatch):
    monkeypatch.delenv("FEDROUTER_ADMIN_KEY", raising=False)
    _, cfg, ledger = sim_and_config
    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        for path in ("/admin/v1/usage", "/metrics"):
            for bearer in ("", "Bearer", "Bearer x"):
                r = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"authorization": bearer}, timeout=5)
                assert r.status_code == 403 and "disabled" in r.json()["error"]["message"], (path, bearer)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert "FEDROUTER_ADMIN_KEY is not set: the admin API and /metrics are off" in stderr
