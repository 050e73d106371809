"""`fedrouter keys import`: keys stored by the SHA-256 of their secrets (as LiteLLM stores its
virtual keys), so that clients move without new keys."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import openai
import pytest

from tests.processes import free_port, run, spawn, wait_ready


@pytest.fixture
def config(start_sim_backend, tmp_path):
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
tenants:
  - name: acme
""")
    return cfg, f"sqlite:///{tmp_path / 'ledger.db'}"


def test_an_imported_hash_authenticates_its_plaintext_through_the_gateway(config, tmp_path):
    cfg, ledger = config
    plain = "sk-" + secrets.token_hex(16)  # a LiteLLM virtual key
    other = "sk-" + secrets.token_hex(16)
    listed = tmp_path / "hashes.txt"
    listed.write_text(
        f"# exported from LiteLLM_VerificationToken.token\n\n{hashlib.sha256(other.encode()).hexdigest()}\n"
    )
    given = hashlib.sha256(plain.encode()).hexdigest().upper()  # case does not matter
    done = run(
        "keys",
        "import",
        "--tenant",
        "acme",
        "--sha256",
        given,
        "--file",
        str(listed),
        "--config",
        str(cfg),
        "--ledger",
        ledger,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Imported key_") == 2
    again = run("keys", "import", "--tenant", "acme", "--sha256", given, "--config", str(cfg), "--ledger", ledger)
    assert again.returncode == 0 and "1 hash(es) already stored" in again.stderr

    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        for key in (plain, other):
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) as client:
                reply = client.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=3
                )
                assert reply.usage is not None and reply.usage.completion_tokens == 3
        wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=plain + "x", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    assert plain not in Path(ledger.removeprefix("sqlite:///")).read_bytes().decode("latin-1")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sha256", "sk-not-a-hash-0123456789"], "--sha256: not a SHA-256 hash"),
        (["--sha256", "a" * 63], "got 63 characters"),
        ([], "give --sha256 HEX or --file FILE"),
    ],
)
def test_bad_input_is_one_line_names_the_flag_and_never_echoes_a_secret(config, args, fragment):
    cfg, ledger = config
    done = run("keys", "import", "--tenant", "acme", *args, "--config", str(cfg), "--ledger", ledger)
    assert done.returncode == 2 and fragment in done.stderr
    assert "sk-not-a-hash" not in done.stderr


def test_an_unknown_tenant_or_a_bad_line_imports_nothing(config, tmp_path):
    cfg, ledger = config
    good = hashlib.sha256(b"sk-good").hexdigest()
    bad = tmp_path / "hashes.txt"
    bad.write_text(f"{good}\nnot-a-hash\n")
    done = run("keys", "import", "--tenant", "acme", "--file", str(bad), "--config", str(cfg), "--ledger", ledger)
    assert done.returncode == 2 and f"{bad}:2: not a SHA-256 hash" in done.stderr
    nobody = run("keys", "import", "--tenant", "nobody", "--sha256", good, "--config", str(cfg), "--ledger", ledger)
    assert nobody.returncode == 2 and "unknown tenant 'nobody'" in nobody.stderr
    listed = run("keys", "list", "--ledger", ledger)
    assert listed.returncode == 0 and listed.stdout.strip() == ""


def test_an_imported_key_carries_its_model_list_and_limits(config):
    cfg, ledger = config
    digest = hashlib.sha256(b"sk-limited").hexdigest()
    flags = ("--config", str(cfg), "--ledger", ledger)
    done = run(
        "keys", "import", "--tenant", "acme", "--sha256", digest, "--model", "m1", "--rpm", "5", "--name", "ci", *flags
    )
    assert done.returncode == 0, done.stderr
    listed = run("keys", "list", "--ledger", ledger).stdout
    assert "name ci" in listed and "models m1" in listed and "limits requests_per_minute=5" in listed
    assert digest not in listed
