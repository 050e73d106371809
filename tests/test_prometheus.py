"""The shipped Prometheus files checked by Prometheus itself: promtool on the rules, their unit
tests, the scrape config and the gateway's exposition, and a real Prometheus scraping a real
gateway with the admin key. ``.ci/run`` puts promtool and prometheus on PATH."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import backend_entry
from tests.processes import free_port
from tests.servers import ADMIN_KEY, wait_for

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "dashboards" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
SCRAPE = PROMETHEUS_DIR / "scrape.yml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def scrape_config(tmp: Path, targets: dict[str, tuple[int, str]], interval: str = "15s") -> Path:
    """The shipped scrape.yml with the rules beside it, one copy of its job per (port, admin key)
    in ``targets``, and each key in a file of its own as the config asks."""
    shutil.copy(ALERTS, tmp / "alerts.yml")
    config = yaml.safe_load(SCRAPE.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    (job,) = config["scrape_configs"]
    jobs = []
    for name, (port, key) in targets.items():
        credentials = tmp / f"{name}.key"
        credentials.write_text(key)
        jobs.append(
            {
                **job,
                "job_name": name,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                "authorization": {**job["authorization"], "credentials_file": str(credentials)},
            }
        )
    config["scrape_configs"] = jobs
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def gw(start_sim_backend, start_gateway):
    sim = start_sim_backend("dc1", ["m1"])
    gateway = start_gateway([backend_entry(sim)])
    client = gateway.client()
    client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    for chunk in client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    ):
        assert chunk.object == "chat.completion.chunk"
    assert httpx.post(
        gateway.url + "/v1/chat/completions", headers=gateway.auth(), json={"model": "nope", "messages": []}
    ).status_code in (400, 404)
    return gateway


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", str(ALERTS))


@needs_promtool
def test_alert_rules_fire_when_they_should() -> None:
    """dashboards/prometheus/alerts_test.yml: every alert, before and after its `for:`, and the
    traffic it must not fire on (clients' own errors, a backend only one replica ejected)."""
    output = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in output
    tested = {
        case["alertname"]
        for group in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
        for case in group["alert_rule_test"]
    }
    assert tested == {
        rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    }


@needs_promtool
def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    output = promtool("check", "config", str(scrape_config(tmp_path, {"fedrouter": (8080, ADMIN_KEY)})))
    assert "SUCCESS" in output and "6 rules found" in output


@needs_promtool
def test_exposition_passes_promtool_lint(gw) -> None:
    text = httpx.get(gw.url + "/metrics", headers=gw.admin()).text
    assert 'fedrouter_requests_total{backend="dc1"' in text
    promtool("check", "metrics", stdin=text)  # non-zero on a malformed exposition or a lint problem


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start a real Prometheus on a config; yields a function from config path to its API URL."""
    running: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> str:
        port = free_port()
        with (tmp_path / "prometheus.log").open("wb") as log:
            running.append(
                subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert running[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.1)
        raise AssertionError("prometheus did not become ready:\n" + (tmp_path / "prometheus.log").read_text())

    yield start
    for process in running:
        process.terminate()
        process.wait(10)


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@needs_prometheus
def test_prometheus_scrapes_the_gateway_with_the_admin_key(gw, prometheus, tmp_path: Path) -> None:
    """The shipped job, given a wrong key, is down and its alert pending; a copy of the job with the
    admin key scrapes the gateway's series, on which every rule evaluates without error."""
    url = prometheus(
        scrape_config(
            tmp_path, {"fedrouter": (gw.port, "not-the-admin-key"), "fedrouter-ok": (gw.port, ADMIN_KEY)}, interval="1s"
        )
    )

    def scraped() -> dict[str, tuple[str, str]]:
        targets = httpx.get(url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        return health if len(health) == 2 and "unknown" not in {h for h, _ in health.values()} else {}

    health = wait_for(scraped, 20.0)
    assert health["fedrouter-ok"] == ("up", "")
    assert health["fedrouter"][0] == "down" and "401" in health["fedrouter"][1]
    assert {r["metric"]["job"]: r["value"][1] for r in _query(url, "up")} == {"fedrouter": "0", "fedrouter-ok": "1"}

    served = _query(url, 'sum by (outcome) (fedrouter_requests_total{job="fedrouter-ok", backend="dc1"})')
    assert {r["metric"]["outcome"]: float(r["value"][1]) for r in served} == {"ok": 2.0}
    assert _query(url, 'fedrouter_backend_up{job="fedrouter-ok", backend="dc1", backend_class="datacenter"}')
    ttft = _query(url, 'fedrouter_ttft_seconds_count{job="fedrouter-ok", backend="dc1"}')
    assert [float(r["value"][1]) for r in ttft] == [1.0]  # the one stream

    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Go's zero time until a rule is first evaluated
        return rules if rules and not any(rule["lastEvaluation"].startswith("0001") for rule in rules) else []

    rules = wait_for(evaluated, 20.0)
    assert len(rules) == 6 and {rule["health"] for rule in rules} == {"ok"}, rules

    def alerts() -> list[tuple[str, str | None, str]]:
        found = httpx.get(url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [(a["labels"]["alertname"], a["labels"].get("job"), a["state"]) for a in found]

    # Pending, not firing: it needs 5 minutes. Nothing else fires on a healthy gateway.
    assert wait_for(alerts, 20.0) == [("FedrouterMetricsScrapeFailing", "fedrouter", "pending")]
