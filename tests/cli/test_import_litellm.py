"""`fedrouter import litellm`: LiteLLM proxy configs converted, checked, and routed through.

The configs in tests/data/litellm are laid out as LiteLLM's docs lay them out: Azure + OpenAI +
Anthropic, fallbacks with reliability settings, and per-deployment rpm/tpm load balancing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from router.cli.litellm_config import Options, convert
from tests.processes import free_port, run, spawn, wait_ready

DATA = Path(__file__).parents[1] / "data" / "litellm"
CONFIGS = ["azure_openai_anthropic.yaml", "fallbacks.yaml", "rpm_load_balancing.yaml"]
# What an operator sets where fedrouter serves (the notes list each variable).
ENV = {
    name: "test-key-0123456789"
    for name in (
        "AZURE_EUROPE_API_KEY",
        "AZURE_CANADA_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GPU_NODE_1_API_KEY",
        "GPU_NODE_2_API_KEY",
        "GROQ_API_KEY",
    )
}
SECRETS = (
    "sk-vllm-node1-3f9a1c5e7d",
    "sk-vllm-node2-77b0de41aa",
    "sk-1234-master-literal",
    "gsk_literal_groq_secret_0042",
)


def _convert(path: Path, tmp_path: Path, *flags: str) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path / "fedrouter.yaml"
    done = run("import", "litellm", str(path), "--output", str(out), *flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    return yaml.safe_load(out.read_text()), done.stderr, out


def _not_carried(stderr: str) -> dict[str, str]:
    """The last section of the notes: where -> why."""
    _, sep, tail = stderr.partition("Not carried over (")
    assert sep, stderr
    lines = tail.splitlines()[1:]
    assert all(line.startswith("  ") for line in lines), "nothing follows the list"
    return dict(line.strip().split(": ", 1) for line in lines)


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_converts_and_passes_check_config(name, tmp_path):
    config, _, out = _convert(DATA / name, tmp_path)
    checked = run("check-config", str(out), env=ENV)
    assert checked.returncode == 0, checked.stderr
    assert f"ok ({len(config['backends'])} backends, 1 tenant)" in checked.stdout
    printed = run("import", "litellm", str(DATA / name))  # without --output: the same, on stdout
    assert printed.returncode == 0 and yaml.safe_load(printed.stdout) == config
    assert all(b["class"] == "datacenter" for b in config["backends"])


def test_azure_openai_and_anthropic_map_field_by_field(tmp_path):
    config, stderr, _ = _convert(DATA / "azure_openai_anthropic.yaml", tmp_path)
    b = {backend["name"]: backend for backend in config["backends"]}
    assert b["gpt-4o-eu"] == {
        "name": "gpt-4o-eu",
        "class": "datacenter",
        "type": "litellm",
        "models": {"gpt-4o": "azure/gpt-4o-eu", "gpt-4": "azure/gpt-4o-eu"},  # model_group_alias
        "base_url": "https://my-endpoint-europe-berri-992.openai.azure.com/",
        "api_key": "env:AZURE_EUROPE_API_KEY",
        "price": {"input": 2.5, "output": 10.0},  # base_model, in litellm's price map
        "timeouts": {"total": 120.0},  # litellm_settings.request_timeout
    }
    assert b["gpt-4o-mini"]["type"] == "openai" and b["gpt-4o-mini"]["base_url"] == "https://api.openai.com/v1"
    assert b["gpt-4o-mini"]["models"] == {"gpt-4o-mini": "gpt-4o-mini"}
    assert b["gpt-4o-mini"]["timeouts"] == {"total": 30.0, "first_token": 10.0, "idle": 10.0}
    assert b["text-embedding-3-small"]["capabilities"] == ["embeddings"]
    assert b["claude-sonnet"]["models"] == {"claude-sonnet": "anthropic/claude-sonnet-4-5-20250929"}
    assert config["routing"] == {"max_attempts": 3, "deadline_s": 120.0}
    dropped = _not_carried(stderr)
    assert "AZURE_API_VERSION=2024-10-21" in dropped["model_list[0] (gpt-4o).litellm_params.api_version"]
    assert "max_concurrency" in dropped["model_list[0] (gpt-4o).litellm_params.rpm"]
    assert "extra headers" in dropped["model_list[4] (claude-sonnet).litellm_params.extra_headers"]
    for key in ("litellm_params.max_tokens", "drop_params", "success_callback"):
        assert any(where.endswith(key) for where in dropped), key
    env = stderr.split("Set in the environment where fedrouter runs:")[1]
    assert "AZURE_API_VERSION: 2024-10-21" in env and "FEDROUTER_ADMIN_KEY" in env and "FEDROUTER_LEDGER" in env


def test_fallbacks_and_reliability_settings(tmp_path):
    config, stderr, _ = _convert(DATA / "fallbacks.yaml", tmp_path)
    assert config["fallback_models"] == {"gpt-4o": ["llama-3.1-70b"], "llama-3.1-70b": ["llama-3.1-8b"]}
    assert config["routing"] == {
        "max_attempts": 3,
        "deadline_s": 90.0,
        "eject_after_failures": 2,
        "eject_seconds": 30.0,
    }
    assert config["tenants"] == [
        {"name": "default", "budgets": [{"metric": "usd", "period": "monthly", "hard": 500.0}], "policy": "fastest"}
    ]
    b = {backend["name"]: backend for backend in config["backends"]}
    assert b["llama-3.1-70b"]["price"] == {"input": 0.6, "output": 0.6}
    assert b["llama-3.1-70b"]["context_length"] == 131072
    assert b["llama-3.1-70b"]["timeouts"] == {"total": 60.0}  # its own, over router_settings.timeout
    dropped = _not_carried(stderr)
    assert "cycle" in dropped["fallbacks[llama-3.1-8b] -> llama-3.1-70b"]
    assert "not on a refusal" in dropped["litellm_settings.content_policy_fallbacks"]
    assert "FEDROUTER_STATE: redis://:<redis_password>@$REDIS_HOST:6379/0" in stderr


def test_a_literal_secret_becomes_an_env_reference_and_is_never_written(tmp_path):
    config, stderr, out = _convert(DATA / "rpm_load_balancing.yaml", tmp_path)
    printed = run("import", "litellm", str(DATA / "rpm_load_balancing.yaml"))
    for secret in SECRETS:
        assert secret not in out.read_text() and secret not in stderr and secret not in printed.stdout
    b = {backend["name"]: backend for backend in config["backends"]}
    assert b["gpu-node-1"]["api_key"] == "env:GPU_NODE_1_API_KEY" and b["gpu-node-1"]["max_concurrency"] == 32
    assert b["gpu-node-2"]["api_key"] == "env:GPU_NODE_2_API_KEY"
    assert [m for backend in b.values() for m in backend["models"]] == ["llama-3.1-8b"] * 3
    assert config["limits"] == {"max_concurrency": 200}
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4 and all("literal secret" in w for w in warnings)
    assert sum("litellm_params.rpm" in w or w.endswith(".rpm") for w in _not_carried(stderr)) == 3


def test_the_class_flag_and_bad_input(tmp_path):
    config, _, _ = _convert(DATA / "fallbacks.yaml", tmp_path, "--class", "sovereign")
    assert {b["class"] for b in config["backends"]} == {"sovereign"}
    bad = tmp_path / "bad.yaml"
    for text, fragment in (
        ("model_list: [", "not valid YAML"),
        ("general_settings: {}", "needs a non-empty model_list"),
    ):
        bad.write_text(text)
        done = run("import", "litellm", str(bad))
        assert done.returncode == 2 and fragment in done.stderr and len(done.stderr.splitlines()) == 1
        assert done.stdout == ""


# -- routed through a converted config -----------------------------------------------------------


def _pointed(name: str, tmp_path: Path, bases: dict[int, str]) -> Path:
    """The LiteLLM config with some deployments' api_base pointed at simulated backends."""
    raw = yaml.safe_load((DATA / name).read_text())
    for index, url in bases.items():
        raw["model_list"][index]["litellm_params"]["api_base"] = url
    path = tmp_path / f"litellm-{name}"
    path.write_text(yaml.safe_dump(raw))
    return path


@contextlib.contextmanager
def _gateway(litellm_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    """`fedrouter serve` on the converted config, and a client with a key of its tenant."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    _, _, out = _convert(litellm_config, tmp_path)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    created = run("keys", "create", "--tenant", "default", "--config", str(out), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    port = free_port()
    with spawn("serve", "--config", str(out), "--port", str(port), "--ledger", ledger) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        key = created.stdout.strip().splitlines()[-1]
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) as client:
            yield client


def _ask(client: openai.OpenAI, model: str) -> str:
    """The backend that answered."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert raw.parse().usage.completion_tokens == 3
    return raw.headers["x-fedrouter-backend"]


def test_azure_openai_anthropic_routes_to_openai_and_anthropic_backends(start_sim_backend, tmp_path, monkeypatch):
    oai, anthropic = start_sim_backend("oai", ["gpt-4o-mini"]), start_sim_backend("anth")
    anthropic_root = anthropic.base_url.removesuffix("/v1")  # litellm adds /v1/messages
    config = _pointed("azure_openai_anthropic.yaml", tmp_path, {2: oai.base_url, 4: anthropic_root})
    with _gateway(config, tmp_path, monkeypatch) as client:
        assert _ask(client, "gpt-4o-mini") == "gpt-4o-mini"
        assert _ask(client, "claude-sonnet") == "claude-sonnet"
    assert oai.stats()["by_path"] == {"/v1/chat/completions": 1}
    assert anthropic.stats()["by_path"] == {"/v1/messages": 1}


def test_fallbacks_route_to_the_fallback_model_once_the_primary_is_out(start_sim_backend, tmp_path, monkeypatch):
    primary, fallback = start_sim_backend("primary", fail_status=503), start_sim_backend("fallback")
    config = _pointed("fallbacks.yaml", tmp_path, {0: primary.base_url, 1: fallback.base_url})
    answered: list[str] = []
    with _gateway(config, tmp_path, monkeypatch) as client:
        for _ in range(6):
            with contextlib.suppress(openai.APIStatusError):
                answered.append(_ask(client, "gpt-4o"))
    assert len(answered) >= 5 and set(answered) == {"llama-3.1-70b"}  # at most the first fails
    assert primary.stats()["failed"] >= 2  # tried, and ejected after allowed_fails + 1 failures
    assert fallback.stats()["completed"] == len(answered)


def test_rpm_load_balanced_deployments_all_serve_the_one_model(start_sim_backend, tmp_path, monkeypatch):
    sims = [start_sim_backend(n) for n in ("node1", "node2", "groq")]
    config = _pointed("rpm_load_balancing.yaml", tmp_path, {i: s.base_url for i, s in enumerate(sims)})
    with _gateway(config, tmp_path, monkeypatch) as client:
        answered = [_ask(client, "llama-3.1-8b") for _ in range(6)]
    assert set(answered) <= {"gpu-node-1", "gpu-node-2", "llama-3.1-8b"}
    assert sum(s.stats()["completed"] for s in sims) == 6


# -- the mapping in memory: edge cases ------------------------------------------------------------


def test_deployments_of_one_name_get_distinct_backends_and_secret_variables():
    deployment = {"model_name": "llama", "litellm_params": {"model": "openai/llama", "api_base": "http://a:8000/v1"}}
    raw = {
        "model_list": [
            {**deployment, "litellm_params": {**deployment["litellm_params"], "api_key": "sk-one"}},
            {**deployment, "litellm_params": {**deployment["litellm_params"], "api_key": "sk-two"}},
        ]
    }
    out, notes = convert(raw, Options(), environ={})
    assert [(b["name"], b["api_key"]) for b in out["backends"]] == [
        ("llama", "env:LLAMA_API_KEY"),
        ("llama-2", "env:LLAMA_2_API_KEY"),
    ]
    assert "sk-one" not in repr((out, notes)) and "sk-two" not in repr((out, notes))


def test_what_cannot_be_known_or_served_is_listed_never_dropped_silently():
    raw = {
        "model_list": [
            {"model_name": "*", "litellm_params": {"model": "openai/*"}},
            {"model_name": "az", "litellm_params": {"model": "azure/x", "api_base": "os.environ/AZURE_API_BASE"}},
            {"model_name": "mistral", "litellm_params": {"model": "mistral-large", "custom_llm_provider": "mistral"}},
            {"model_name": "slow", "litellm_params": {"model": "openai/slow", "timeout": "soon"}},
        ],
        "router_settings": {"num_retries": "many", "fallbacks": [{"slow": ["nowhere"]}]},
        "mcp_servers": {"wiki": {}},
    }
    out, notes = convert(raw, Options(), environ={})
    assert [b["models"] for b in out["backends"]] == [{"mistral": "mistral/mistral-large"}, {"slow": "slow"}]
    dropped = dict(notes.dropped)
    assert "wildcard" in dropped["model_list[0] (*)"]
    assert "os.environ/AZURE_API_BASE" in dropped["model_list[1] (az)"]
    assert dropped["model_list[3] (slow).litellm_params.timeout"] == "'soon' is not a number"
    assert "not of the form" in dropped["router_settings.num_retries"]
    assert "'nowhere' is not among" in dropped["router_settings.fallbacks[slow]"]
    assert dropped["mcp_servers"] == "no equivalent section in fedrouter"
    resolved, _ = convert(raw, Options(), environ={"AZURE_API_BASE": "https://x.openai.azure.com"})
    assert resolved["backends"][0]["base_url"] == "https://x.openai.azure.com"
