"""Usage and payout exports over a real gateway: every format through the API and the CLI, totals
to the cent, FOCUS 1.2's mandatory columns and types, and tenant isolation."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from router.ledger.exports import FOCUS_CUSTOM, FOCUS_MANDATORY
from tests.conftest import backend_entry
from tests.ledger.test_ledger import pg_url  # noqa: F401  (the fixture: a PostgreSQL database for this session)
from tests.processes import free_port, run, spawn, wait_ready

TODAY = datetime.now(UTC).date()
# Around the requests' day, so a run that crosses midnight UTC still exports everything.
SPAN = {"from": str(TODAY - timedelta(days=1)), "to": str(TODAY + timedelta(days=1))}
FOCUS_DATETIMES = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
FOCUS_DECIMALS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity")


@pytest.fixture
def gw(start_sim_backend, start_gateway):
    dc, sov = start_sim_backend("dc1"), start_sim_backend("sov1")
    gateway = start_gateway(
        [backend_entry(dc), backend_entry(sov, "sovereign", zone="FR", price={"input": 0.7, "output": 1.3})]
    )
    for tenant, n in (("acme", 5), ("other", 3)):
        client = gateway.client(tenant)
        for i in range(n):
            client.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=3 + i
            )
        list(
            client.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "go"}], max_tokens=7, stream=True
            )
        )
    return gateway


def fetch(gw, path: str, headers: dict[str, str], **params: str) -> httpx.Response:
    return httpx.get(gw.url + path, params={**SPAN, **params}, headers=headers, timeout=10)


def parse(body: bytes, fmt: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return [orjson.loads(line) for line in body.splitlines()]
    return list(csv.DictReader(io.StringIO(body.decode())))


def billed_cost(rows: list[dict[str, Any]], fmt: str, granularity: str) -> Decimal:
    if fmt == "focus":
        return sum((Decimal(r["BilledCost"]) for r in rows), Decimal(0))
    if granularity == "request":
        rows = [r for r in rows if r["billed"] in (True, "true")]
    return sum((Decimal(str(r["cost_usd"])) for r in rows), Decimal(0))


def assert_cents(total: Decimal, expected: float) -> None:
    assert abs(total - Decimal(repr(expected))) < Decimal("1e-9"), (total, expected)
    assert total.quantize(Decimal("0.01")) == Decimal(repr(expected)).quantize(Decimal("0.01"))


@pytest.mark.parametrize("granularity", ["request", "daily"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "focus"])
def test_admin_export_totals_equal_ledger_totals(gw, fmt, granularity):
    totals = gw.usage("acme")["totals"]
    r = fetch(gw, "/admin/v1/usage/export", gw.admin(), tenant="acme", format=fmt, granularity=granularity)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson" if fmt == "jsonl" else "text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = parse(r.content, fmt)
    assert rows
    assert_cents(billed_cost(rows, fmt, granularity), totals["cost_usd"])
    if fmt == "focus":
        assert {row["BillingAccountId"] for row in rows} == {"acme"}
        assert sum(int(row["x_TokensOut"]) for row in rows) == totals["output_tokens"]
    elif granularity == "request":
        assert len(rows) == totals["requests"] == 6
        assert {row["tenant"] for row in rows} == {"acme"}


def test_focus_export_has_every_mandatory_column_typed(gw):
    r = fetch(gw, "/admin/v1/usage/export", gw.admin(), format="focus")
    header = r.text.splitlines()[0].split(",")
    assert set(FOCUS_MANDATORY) <= set(header)
    assert set(FOCUS_CUSTOM) <= set(header)
    rows = parse(r.content, "focus")
    assert len(rows) == 10 and {row["BillingAccountId"] for row in rows} == {"acme", "other"}
    for row in rows:
        when = {c: datetime.strptime(row[c], "%Y-%m-%dT%H:%M:%SZ") for c in FOCUS_DATETIMES}
        assert when["BillingPeriodStart"] <= when["ChargePeriodStart"] < when["ChargePeriodEnd"]
        assert when["ChargePeriodStart"] < when["BillingPeriodEnd"]
        assert when["BillingPeriodStart"].day == 1
        for c in (*FOCUS_DECIMALS, "x_EnergyWh", "x_CarbonGramsCO2e"):
            assert "e" not in row[c].lower() and Decimal(row[c]) >= 0, (c, row[c])
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
        assert int(row["PricingQuantity"]) == int(row["x_TokensIn"]) + int(row["x_TokensOut"]) > 0
        assert (row["ChargeCategory"], row["BillingCurrency"], row["PricingUnit"]) == ("Usage", "USD", "Tokens")
        assert row["ChargeClass"] == ""  # null: no row corrects an earlier invoice
        assert row["ServiceCategory"] == "AI and Machine Learning" and row["ServiceName"]
        assert row["ChargeDescription"] and row["InvoiceIssuerName"] and row["ProviderName"]
        assert row["PublisherName"] == row["x_Backend"] in ("dc1", "sov1")
        assert row["x_BackendClass"] == ("sovereign" if row["x_Backend"] == "sov1" else "datacenter")
        assert row["x_Zone"] == ("FR" if row["x_Backend"] == "sov1" else "")
        assert row["x_EnergyProvenance"] == "declared" and Decimal(row["x_EnergyWh"]) > 0
        assert row["SubAccountId"].startswith("key_")


def test_request_rows_carry_the_routing_decision(gw):
    rows = parse(fetch(gw, "/admin/v1/usage/export", gw.admin(), tenant="acme", format="jsonl").content, "jsonl")
    for row in rows:
        assert row["event_id"] == f"{row['request_id']}:{row['attempt']}"
        assert (row["kind"], row["billed"]) == ("request", True)
        names = [c["backend"] for c in row["decision"]["candidates"]]
        assert row["backend"] in names and set(names) <= {"dc1", "sov1"}
        assert all(c["score"] >= 0 for c in row["decision"]["candidates"])


def test_tenant_exports_only_its_own_usage(gw):
    for params in ({}, {"tenant": "acme"}):  # there is no parameter naming another tenant; one is ignored
        r = fetch(gw, "/v1/usage/export", gw.auth("other"), format="jsonl", **params)
        assert r.status_code == 200
        rows = parse(r.content, "jsonl")
        assert len(rows) == 4 and {row["tenant"] for row in rows} == {"other"}
    focus = parse(fetch(gw, "/v1/usage/export", gw.auth("other"), format="focus", granularity="daily").content, "focus")
    assert {row["BillingAccountId"] for row in focus} == {"other"}
    assert_cents(billed_cost(focus, "focus", "daily"), gw.usage("other")["totals"]["cost_usd"])
    assert fetch(gw, "/v1/usage/export", {}).status_code == 401


@pytest.mark.parametrize("path", ["/admin/v1/usage/export", "/admin/v1/payouts"])
def test_admin_exports_reject_tenant_keys(gw, path):
    r = fetch(gw, path, gw.auth("acme"), tenant="acme")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"from": "2025-02-02", "to": "2025-02-01"}, "from"),
        ({"format": "xlsx"}, "format"),
        ({"granularity": "hourly"}, "granularity"),
        ({"tenant": "ghost"}, "tenant"),
        ({"to": "tomorrow"}, "to"),
        ({"from": None}, "from"),
    ],
)
def test_bad_export_requests_are_400_with_the_param(gw, params, param):
    query = {k: v for k, v in {**SPAN, **params}.items() if v is not None}
    r = httpx.get(gw.url + "/admin/v1/usage/export", params=query, headers=gw.admin(), timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["param"], err["type"]) == (param, "invalid_request_error")
    assert err["message"] and r.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_payouts_per_backend(gw, fmt):
    r = fetch(gw, "/admin/v1/payouts", gw.admin(), format=fmt)
    assert r.status_code == 200
    rows = {row["backend"]: row for row in parse(r.content, fmt)}
    assert set(rows) <= {"dc1", "sov1"} and rows
    revenue = sum((Decimal(str(row["revenue_usd"])) for row in rows.values()), Decimal(0))
    assert_cents(revenue, gw.usage()["totals"]["cost_usd"])
    assert sum(int(row["requests"]) for row in rows.values()) == 10
    if "sov1" in rows:
        assert (rows["sov1"]["backend_class"], rows["sov1"]["zone"]) == ("sovereign", "FR")
    assert fetch(gw, "/admin/v1/payouts", gw.admin(), format="focus").status_code == 400


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "focus"])
def test_cli_export_matches_ledger_totals(gw, tmp_path: Path, fmt):
    out = tmp_path / f"acme.{fmt}"
    result = run(
        "export",
        "--tenant",
        "acme",
        "--from",
        SPAN["from"],
        "--to",
        SPAN["to"],
        "--format",
        fmt,
        "--ledger",
        f"sqlite:///{gw.db_path}",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = parse(out.read_bytes(), fmt)
    assert_cents(billed_cost(rows, fmt, "request"), gw.usage("acme")["totals"]["cost_usd"])
    daily = run(
        "export",
        "--tenant",
        "acme",
        "--from",
        SPAN["from"],
        "--to",
        SPAN["to"],
        "--format",
        fmt,
        "--granularity",
        "daily",
        "--ledger",
        f"sqlite:///{gw.db_path}",
    )
    assert daily.returncode == 0, daily.stderr
    assert_cents(billed_cost(parse(daily.stdout.encode(), fmt), fmt, "daily"), gw.usage("acme")["totals"]["cost_usd"])


def test_cli_payouts(gw):
    result = run("payouts", "--from", SPAN["from"], "--to", SPAN["to"], "--ledger", f"sqlite:///{gw.db_path}")
    assert result.returncode == 0, result.stderr
    revenue = sum((Decimal(r["revenue_usd"]) for r in parse(result.stdout.encode(), "csv")), Decimal(0))
    assert_cents(revenue, gw.usage()["totals"]["cost_usd"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--from", "2025-02-02", "--to", "2025-02-01"], "is after --to"),
        (["--from", "2025-02-01", "--to", "2025-02-31"], "expected ISO dates"),
        (["--from", "2025-02-01", "--to", "2025-02-02", "--format", "xml"], "--format 'xml'"),
        (["--from", "2025-02-01", "--to", "2025-02-02", "--granularity", "hour"], "--granularity 'hour'"),
    ],
)
def test_cli_export_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, fragment):
    db = tmp_path / "none.db"
    result = run("export", "--tenant", "acme", *args, "--ledger", f"sqlite:///{db}")
    assert result.returncode == 2
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = run("export", "--from", "2025-02-01", "--to", "2025-02-02", "--ledger", f"sqlite:///{db}")
    assert missing.returncode == 2 and "no ledger at" in missing.stderr
    assert not db.exists()


def test_export_of_a_quiet_range_is_just_a_header(gw):
    r = httpx.get(
        gw.url + "/admin/v1/usage/export",
        headers=gw.admin(),
        timeout=10,
        params={"from": str(date(2001, 1, 1)), "to": str(date(2001, 1, 31)), "format": "focus"},
    )
    assert r.status_code == 200 and r.text.count("\n") == 1


def test_gateway_on_a_postgres_ledger_keeps_keys_in_sqlite(start_sim_backend, tmp_path: Path, request):
    pg = request.getfixturevalue("pg_url")
    sim = start_sim_backend("dc1")
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(
        f"backends:\n  - {{name: dc1, class: datacenter, type: openai, base_url: '{sim.base_url}', "
        "models: [m1], price: {input: 1.0, output: 2.0}}\ntenants:\n  - name: acme\n"
    )
    env = {"FEDROUTER_LEDGER": pg, "FEDROUTER_KEYS_DB": str(tmp_path / "keys.db")}
    created = run("keys", "create", "--tenant", "acme", "--config", str(cfg), env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]
    port = free_port()
    with spawn("serve", "--config", str(cfg), "--port", str(port), env=env) as proc:
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
        )
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
    exported = run("export", "--from", SPAN["from"], "--to", SPAN["to"], "--format", "jsonl", env=env)
    assert exported.returncode == 0, exported.stderr
    rows = [r for r in parse(exported.stdout.encode(), "jsonl") if r["request_id"] == request_id]
    assert len(rows) == 1 and rows[0]["output_tokens"] == 4 and rows[0]["key_id"].startswith("key_")
    assert (tmp_path / "keys.db").exists()


@pytest.mark.parametrize(
    ("span", "param"),
    [
        ({"from": "9999-12-31", "to": "9999-12-31"}, "from"),  # once an OverflowError in the ledger
        ({"from": "2025-01-01", "to": "9999-12-31"}, "to"),
        ({"from": "0001-01-01", "to": "2025-01-01"}, "from"),
        ({"from": "2025-02-02", "to": "2025-02-01"}, "from"),  # reversed
        ({"from": "2025-02-30", "to": "2025-03-01"}, "from"),  # no such day
    ],
)
def test_bad_ranges_are_400_on_every_route_that_takes_one(gw, span, param):
    with httpx.Client(base_url=gw.url, timeout=10) as client:  # one kept-alive connection throughout
        for path, headers in (
            ("/v1/usage/export", gw.auth()),
            ("/admin/v1/usage/export", gw.admin()),
            ("/admin/v1/payouts", gw.admin()),
        ):
            r = client.get(path, params=span, headers=headers)
            assert r.status_code == 400, (path, r.text)
            err = r.json()["error"]
            assert (err["param"], err["type"]) == (param, "invalid_request_error"), path
            assert r.headers["x-should-retry"] == "false"
        assert client.get("/healthz").status_code == 200  # the connection still answers in turn


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--from", "9999-12-31", "--to", "9999-12-31"], "--from 9999-12-31 is outside"),
        (["--from", "2025-01-01", "--to", "9999-12-31"], "--to 9999-12-31 is outside"),
    ],
)
@pytest.mark.parametrize("command", ["export", "payouts"])
def test_cli_out_of_range_dates_are_one_line_and_exit_2(tmp_path: Path, command, args, fragment):
    result = run(command, *args, "--ledger", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.returncode == 2
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


FORMULA = '=HYPERLINK("http://evil.example","x")'


def test_cells_a_spreadsheet_would_run_are_neutralised(start_sim_backend, start_gateway):
    """OWASP's CSV injection: a text cell that begins with = + - @ (or a tab or CR) gets a leading
    quote in CSV and FOCUS; numbers stay numbers, and JSON Lines is left as it is."""
    sim = start_sim_backend("dc1", models=[FORMULA, "@m"])
    gw = start_gateway([backend_entry(sim, models=[FORMULA, "@m"])])
    client = gw.client()
    for model in (FORMULA, "@m"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    csv_rows = parse(fetch(gw, "/admin/v1/usage/export", gw.admin(), format="csv").content, "csv")
    assert sorted(r["model"] for r in csv_rows) == ["'" + FORMULA, "'@m"]
    assert all(Decimal(r["cost_usd"]) > 0 and float(r["latency_ms"]) >= 0 for r in csv_rows)
    focus = parse(fetch(gw, "/admin/v1/usage/export", gw.admin(), format="focus").content, "focus")
    assert sorted(r["x_Model"] for r in focus) == ["'" + FORMULA, "'@m"]
    assert all(Decimal(r["BilledCost"]) > 0 for r in focus)
    jsonl = parse(fetch(gw, "/admin/v1/usage/export", gw.admin(), format="jsonl").content, "jsonl")
    assert sorted(r["model"] for r in jsonl) == [FORMULA, "@m"]


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=1+2", "'=1+2"),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-", "'-"),
        ("-0.5", "-0.5"),  # a number written as text stays a number
        ("-1e3", "-1e3"),
        ("plain", "plain"),
    ],
)
def test_neutral_cells(text, cell):
    from router.ledger.exports import neutral

    assert neutral(text) == cell


@pytest.mark.asyncio
async def test_negative_numbers_stay_numbers_in_csv():
    from router.ledger.exports import export_payouts

    row = {"backend": "-b", "requests": -1, "revenue_usd": -0.25, "energy_wh": -1.5}
    body = b"".join([chunk async for chunk in export_payouts([row], "csv")])
    got = parse(body, "csv")[0]
    assert (got["backend"], got["requests"], got["revenue_usd"], got["energy_wh"]) == (
        "'-b",
        "-1",
        "-0.250000000000",
        "-1.500000000000",
    )
