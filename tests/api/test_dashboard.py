"""The admin page over a real server, and the Grafana dashboard and Prometheus rules against the exported metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI

from router.api import admin, admin_tenants
from router.api.dashboard import router as dashboard_router
from router.metrics import Metrics
from tests.servers import serve_app

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
GRAFANA = DASHBOARDS / "grafana" / "fedrouter-overview.json"
ALERTS = DASHBOARDS / "prometheus" / "alerts.yml"
SCRAPE = DASHBOARDS / "prometheus" / "scrape.yml"

# The gateway's metric families, as the contract for dashboards: (name, type).
FAMILIES = {
    "fedrouter_requests": "counter",
    "fedrouter_request_duration_seconds": "histogram",
    "fedrouter_ttft_seconds": "histogram",
    "fedrouter_tokens": "counter",
    "fedrouter_cost_usd": "counter",
    "fedrouter_energy_wh": "counter",
    "fedrouter_upstream_attempts": "counter",
    "fedrouter_backend_up": "gauge",
    "fedrouter_inflight_requests": "gauge",
    "fedrouter_ledger_pending_records": "gauge",
}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
SERIES = {name + suffix for name, kind in FAMILIES.items() for suffix in _SUFFIXES[kind]}

REQUIRED_ALERTS = {
    "FedrouterBackendEjected": "5m",
    "FedrouterHighErrorRatio": "10m",
    "FedrouterSlowTimeToFirstToken": "10m",
    "FedrouterBackendClassDown": None,
    "FedrouterLedgerBacklog": "5m",
}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers,
    windows, grouping label lists, Grafana variables, function calls and keywords are removed."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (backend, outcome) (rate(fedrouter_requests_total{backend=~"$backend"}[$__rate_interval]))',
            {"fedrouter_requests_total"},
        ),
        ("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m]))) > 5", {"x_bucket"}),
        ("max by (backend_class) (up) == 0 and on (job) y offset 5m", {"up", "y"}),
        ("sum(rate(a[1m])) * 3600 / 1e3", {"a"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_contract_matches_the_registered_metrics() -> None:
    registered = {family.name: family.type for family in Metrics().registry.collect()}
    assert {name: registered.get(name) for name in FAMILIES} == FAMILIES


# ---- The admin page, over a real server ----------------------------------------------------


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    app = FastAPI()
    app.include_router(dashboard_router)
    with serve_app(app, "uvicorn") as served:
        yield served.url


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', html)


def test_admin_page(base_url: str) -> None:
    r = httpx.get(f"{base_url}/admin")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>fedrouter admin</title>" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert sorted(_assets(r.text)) == ["admin/admin.css", "admin/admin.js"]


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/admin", "text/html"),
        ("/admin/admin.css", "text/css"),
        ("/admin/admin.js", "text/javascript"),
    ],
)
def test_assets_are_self_contained(base_url: str, path: str, media_type: str) -> None:
    r = httpx.get(base_url + path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media_type)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"https?://", r.text, re.IGNORECASE), "the page must load nothing from elsewhere"
    assert "@import" not in r.text
    assert not re.search(r"url\(\s*['\"]?(?!data:)", r.text), "no external fonts or images"


def test_page_script_writes_text_only(base_url: str) -> None:
    script = httpx.get(f"{base_url}/admin/admin.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script


def test_page_calls_existing_admin_routes(base_url: str) -> None:
    script = httpx.get(f"{base_url}/admin/admin.js").text
    assert 'const API = "admin/v1/"' in script
    found = re.findall(r'getJSON\("(\w+)"\)|"(\w+)\?limit=', script)
    called = {f"/admin/v1/{literal or query}" for literal, query in found}
    assert called == {"/admin/v1/backends", "/admin/v1/tenants", "/admin/v1/usage"}
    assert called <= {getattr(route, "path", None) for route in (*admin.router.routes, *admin_tenants.router.routes)}


# ---- Grafana -------------------------------------------------------------------------------


def _grafana() -> dict:
    return json.loads(GRAFANA.read_text())


def _graph_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_grafana_dashboard_loads() -> None:
    dashboard = _grafana()
    assert dashboard["uid"] == "fedrouter-overview"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("backend", "model"):
        query = variables[name]["query"]["query"]
        assert re.fullmatch(rf"label_values\((\w+), {name}\)", query)
        assert query.split("(")[1].split(",")[0] in SERIES
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_grafana_panels_use_only_exported_metrics() -> None:
    panels = _graph_panels(_grafana())
    assert len(panels) >= 12
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= SERIES, (panel["title"], names - SERIES)
            used |= names
    assert {name.removesuffix("_total").removesuffix("_bucket") for name in used} == set(FAMILIES)


def test_grafana_quantiles_are_over_bucket_rates() -> None:
    for panel in _graph_panels(_grafana()):
        for target in panel["targets"]:
            if "histogram_quantile" in target["expr"]:
                assert re.search(r"rate\(\w+_bucket\{", target["expr"]), target["expr"]
                assert re.search(r"by \([^)]*\ble\b", target["expr"]), target["expr"]


def test_grafana_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _grafana()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells


# ---- Prometheus ----------------------------------------------------------------------------


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    assert set(REQUIRED_ALERTS) <= set(rules)
    for name, duration in REQUIRED_ALERTS.items():
        if duration is not None:
            assert rules[name]["for"] == duration, name
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert metric_names(rule["expr"]) <= SERIES | {"up"}, rule["alert"]
    assert "> 0.05" in rules["FedrouterHighErrorRatio"]["expr"]
    assert "> 5" in rules["FedrouterSlowTimeToFirstToken"]["expr"]
    assert "> 1000" in rules["FedrouterLedgerBacklog"]["expr"]


def test_scrape_config_sends_the_admin_key() -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "fedrouter"
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert "credentials_file" in job["authorization"]
    assert 'job="fedrouter"' in {r["alert"]: r["expr"] for r in _rules()}["FedrouterMetricsScrapeFailing"]
