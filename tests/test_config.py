"""Config validation: typos and bad values are errors that name the key and where it stands."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.base import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, Limits, Timeouts
from router.config import ConfigError, load_config, parse_config
from router.fleet.pricing import PriceMap
from router.fleet.wiring import backend_info, unpriced

ROOT = Path(__file__).resolve().parents[1]


def _backend(**extra):
    entry = {
        "name": "eu-1",
        "class": "sovereign",
        "type": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "models": ["m"],
    }
    entry.update(extra)
    return entry


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backends": [_backend(modles=["m"])]}, "backends[eu-1]: unknown key 'modles'"),
        ({"backends": [_backend(models=[])]}, "backends[eu-1].models: a backend must serve at least one model"),
        ({"backends": [_backend(api_key="sk-inline-secret")]}, "backends[eu-1].api_key: secrets are given by"),
        ({"backends": [_backend(**{"class": "cloud"})]}, "backends[eu-1].class: Input should be"),
        ({"backends": [_backend(type="grpc")]}, "backends[eu-1]: Input tag 'grpc'"),
        ({"backends": [_backend(base_url="ftp://x")]}, "backends[eu-1].base_url: base_url must be an http"),
        ({"backends": [_backend(price={"input": -1, "output": 1})]}, "backends[eu-1].price.input"),
        ({"backends": [_backend(), _backend()]}, "duplicate backend name(s): eu-1"),
        ({"backends": []}, "at least one backend"),
        (
            {"backends": [_backend()], "tenants": [{"name": "t", "policy": "fastestt"}]},
            "tenants[t].policy: unknown policy preset 'fastestt'",
        ),
        (
            {
                "backends": [_backend()],
                "tenants": [{"name": "t", "policy": {"weights": {"latency": 0, "price": 0, "energy": 0}}}],
            },
            "weights must not all be zero",
        ),
        ({"backends": [_backend()], "routing": {"max_attemps": 2}}, "routing: unknown key 'max_attemps'"),
        (
            {"backends": [_backend()], "routing": {"consider": 4, "max_attempts": 5}},
            "routing: consider (4) must be at least max_attempts (5)",
        ),
        (
            {"backends": [_backend(api_key="env:FEDROUTER_TEST_UNSET_VAR")]},
            "environment variable FEDROUTER_TEST_UNSET_VAR is not set",
        ),
        ({"backend": []}, "unknown key 'backend'"),
    ],
)
def test_bad_configs_name_the_problem(raw, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "f.yaml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("f.yaml: ")


def test_model_mapping_and_defaults():
    config = parse_config({"backends": [_backend(models={"public": "upstream/name"})]})
    backend = config.backends[0]
    assert backend.model_map() == {"public": "upstream/name"}
    assert backend.timeouts.first_token == 60.0
    assert config.limits.max_body_bytes == 10 * 1024 * 1024


def test_a_backends_timeouts_and_limits_reach_its_provider_whole():
    """One home for each default (providers.base); the config passes the values as they are."""
    default = parse_config({"backends": [_backend()]}).backends[0]
    assert (default.timeouts.value(), default.limits()) == (DEFAULT_TIMEOUTS, DEFAULT_LIMITS)
    tuned = parse_config(
        {"backends": [_backend(timeouts={"idle": 2}, max_response_bytes=4096, max_event_bytes=2048, max_connections=8)]}
    ).backends[0]
    assert tuned.timeouts.value() == Timeouts(idle=2.0)
    assert tuned.limits() == Limits(max_response_bytes=4096, max_event_bytes=2048, max_connections=8)
    with pytest.raises(ConfigError, match=r"backends\[eu-1\]\.max_connections"):
        parse_config({"backends": [_backend(max_connections=0)]})
    # litellm reads answers with its own client, which these limits cannot bound: not accepted there.
    with pytest.raises(ConfigError, match=r"unknown key 'max_connections'"):
        parse_config({"backends": [_backend(type="litellm", max_connections=8)]})


def test_examples_load(monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "EU1_KEY"):
        monkeypatch.setenv(var, "x")
    config = load_config(ROOT / "examples" / "federation.yaml")
    assert {b.backend_class for b in config.backends} == {"datacenter", "sovereign", "volunteer"}
    assert {b.type for b in config.backends} == {"openai", "litellm"}


def test_models_without_a_price_are_named(monkeypatch):
    """An undeclared price comes from litellm's bundled map; a model it does not know either is
    recorded at cost 0, which start-up and check-config say. The example prices every model."""
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "EU1_KEY"):
        monkeypatch.setenv(var, "x")
    prices = PriceMap()
    example = load_config(ROOT / "examples" / "federation.yaml")
    assert unpriced(backend_info(b, prices) for b in example.backends) == []
    config = parse_config(
        {
            "backends": [
                _backend(models={"mini": "gpt-4o-mini", "mine": "my-finetune"}),  # the map knows only the first
                _backend(name="free", models=["mine"], price={"input": 0, "output": 0}),
            ]
        }
    )
    infos = [backend_info(b, prices) for b in config.backends]
    assert infos[0].prices["mini"] == (0.15, 0.6)
    [warning] = unpriced(infos)
    assert warning.startswith("backend eu-1: model mine (my-finetune) has no price")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")
