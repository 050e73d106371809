"""The Vercel AI SDK (``ai`` and ``@ai-sdk/openai``, installed from npm here and run with the
machine's Node) against the gateway with its default model path, ``openai(model)``, which calls
``POST /v1/responses``: generateText, streamText with usage, and a tool call whose result goes
back. This is the client issue 17 found failing with 404."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import backend_entry

HERE = Path(__file__).resolve().parent / "vercel"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the SDK's pinned packages installed, and the script that calls them."""
    assert shutil.which("node") and shutil.which("npm"), "these tests need Node and npm"
    folder = tmp_path_factory.mktemp("vercel")
    for name in ("package.json", "check.mjs"):
        shutil.copy(HERE / name, folder / name)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return folder


def test_default_model_path_generates_streams_and_calls_tools(sdk, start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1", ["m1"])
    gw = start_gateway([backend_entry(sim)])
    env = {**os.environ, "BASE_URL": gw.url + "/v1", "API_KEY": gw.keys["acme"], "MODEL": "m1"}
    run = subprocess.run(
        ["node", "check.mjs"], check=False, cwd=sdk, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    said: dict[str, dict[str, Any]] = {}
    for line in run.stdout.splitlines():
        record = json.loads(line)
        said[record["kind"]] = record
    assert said.keys() == {"generate", "stream", "tool"}

    for kind in ("generate", "stream"):
        answer = said[kind]
        assert answer["text"].startswith("The quick brown fox")
        assert answer["finish"] == "stop"
        usage = answer["usage"]
        assert usage["outputTokens"] == 16 and usage["inputTokens"] > 0
        assert usage["totalTokens"] == usage["inputTokens"] + 16

    first, second = said["tool"]["steps"]
    assert first["finish"] == "tool-calls"
    [call] = first["calls"]
    assert call["toolName"] == "get_weather" and call["input"] == {"location": "Paris"}
    assert first["results"][0]["output"] == {"location": "Paris", "celsius": 21}
    # The second step sent the call and its result back, as chat messages the backend read.
    messages = sim.last_request()["body"]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call["toolCallId"]
    assert messages[-1]["role"] == "tool" and messages[-1]["tool_call_id"] == call["toolCallId"]
    assert json.loads(messages[-1]["content"]) == {"location": "Paris", "celsius": 21}
    assert second["finish"] == "tool-calls"  # the sim calls its tool whenever it is offered one
    billed = [r for r in gw.usage()["recent"] if r["billed"]]
    assert len(billed) == 4 and all(r["outcome"] == "ok" for r in billed)
