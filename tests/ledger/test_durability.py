"""Kill -9 the gateway mid-traffic: every answer a client saw complete has exactly one ledger row.

Streams end with ``data: [DONE]`` only after their record's transaction has committed, and a
non-streamed body is sent only after it; so a crash may lose records of unfinished requests,
never those of finished ones, and never writes one twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx

from tests.processes import free_port, run, spawn, wait_ready

STREAMS = 50
PLAIN = 10
TOKENS = 20  # at 20 tokens/s a stream takes about a second


async def _client(
    url: str, key: str, delay: float, stream: bool, done: list[str], midway: asyncio.Event
) -> tuple[str | None, bool]:
    await asyncio.sleep(delay)
    body = {"model": "m1", "messages": [{"role": "user", "content": "go"}], "max_tokens": TOKENS, "stream": stream}
    headers = {"authorization": f"Bearer {key}"}
    request_id = None
    try:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as resp,
        ):
            request_id = resp.headers.get("x-request-id")
            if not stream:
                complete = resp.status_code == 200 and b'"usage"' in await resp.aread()
            else:
                complete = False
                async for line in resp.aiter_lines():
                    complete = complete or line == "data: [DONE]"
    except httpx.TransportError:
        return request_id, False  # the gateway died under this request
    if complete:
        done.append(request_id or "")
        if len(done) >= 15:  # mid-way: some requests have finished, many are still streaming
            midway.set()
    return request_id, complete


async def _traffic(url: str, key: str, proc: subprocess.Popen[str]) -> list[tuple[str | None, bool]]:
    done: list[str] = []
    midway = asyncio.Event()
    clients = [asyncio.ensure_future(_client(url, key, i * 0.04, True, done, midway)) for i in range(STREAMS)]
    clients += [asyncio.ensure_future(_client(url, key, 0.3 + i * 0.1, False, done, midway)) for i in range(PLAIN)]
    await asyncio.wait_for(midway.wait(), timeout=30)
    os.kill(proc.pid, signal.SIGKILL)
    return await asyncio.gather(*clients)


def test_kill_9_leaves_exactly_one_row_per_completed_request(start_sim_backend, tmp_path: Path):
    sim = start_sim_backend("slow", tokens_per_s=float(TOKENS))
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(f"""
backends:
  - name: slow
    class: datacenter
    type: openai
    base_url: {sim.base_url}
    models: [m1]
    price: {{input: 1.0, output: 2.0}}
tenants:
  - name: acme
""")
    db = tmp_path / "ledger.db"
    ledger = f"sqlite:///{db}"
    created = run("keys", "create", "--tenant", "acme", "--config", str(cfg), "--ledger", ledger)
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]
    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), "--ledger", ledger) as proc:
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
            results = asyncio.run(_traffic(f"http://127.0.0.1:{port}", key, proc))
        finally:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    completed = {rid for rid, ok in results if ok}
    unfinished = {rid for rid, ok in results if not ok}
    assert len(completed) >= 15 and len(unfinished) >= 10, "the kill must land while requests are in flight"
    conn = sqlite3.connect(db)
    try:
        counts = dict(
            conn.execute(
                "SELECT request_id, COUNT(*) FROM usage_events WHERE kind = 'request' GROUP BY request_id"
            ).fetchall()
        )
        events = conn.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM usage_events").fetchone()
        daily = conn.execute("SELECT SUM(requests) FROM usage_daily").fetchone()[0]
    finally:
        conn.close()
    assert all(counts.get(rid) == 1 for rid in completed), {rid: counts.get(rid) for rid in completed}
    assert all(n == 1 for n in counts.values())
    assert events[0] == events[1] and daily == sum(counts.values())
