"""The ledger's tables, written once and rendered for SQLite and PostgreSQL, and their migrations.

Both stores hold the same two tables: ``usage_events`` (one row per event, keyed by its event
id) and ``usage_daily`` (the rollups). Each store applies its ordered list of migration steps at
start and records the applied version in ``schema_version``; a step is a list of statements run
in one transaction. Hand-written steps are enough for two tables, and keep SQLAlchemy/Alembic
off the gateway's import path.
"""

from __future__ import annotations

from typing import Literal

from router.ledger.base import COLUMNS, ROLLUP_COLUMNS

Dialect = Literal["sqlite", "postgres"]

_TYPES: dict[str, dict[Dialect, str]] = {
    "text": {"sqlite": "TEXT", "postgres": "TEXT"},
    "float": {"sqlite": "REAL", "postgres": "DOUBLE PRECISION"},
    "int": {"sqlite": "INTEGER", "postgres": "INTEGER"},
    "count": {"sqlite": "INTEGER", "postgres": "BIGINT"},
    "bool": {"sqlite": "INTEGER", "postgres": "BOOLEAN"},
    "day": {"sqlite": "TEXT", "postgres": "DATE"},
}
_NULLABLE = frozenset({"zone", "ttft_ms", "key_id", "decision"})
EVENT_TYPES: dict[str, str] = {
    "event_id": "text",
    "request_id": "text",
    "ts": "float",
    "tenant": "text",
    "backend": "text",
    "backend_class": "text",
    "zone": "text",
    "model": "text",
    "endpoint": "text",
    "input_tokens": "int",
    "output_tokens": "int",
    "cost_usd": "float",
    "energy_wh": "float",
    "latency_ms": "float",
    "ttft_ms": "float",
    "outcome": "text",
    "tokens_source": "text",
    "attempts": "int",
    "stream": "bool",
    "attempt": "int",
    "kind": "text",
    "billed": "bool",
    "key_id": "text",
    "carbon_g": "float",
    "energy_source": "text",
    "decision": "text",
}
assert tuple(EVENT_TYPES) == COLUMNS, "every field of UsageRecord needs a column type"

#: rollup figure -> the event column it sums (None: it counts events); billed or not by its name.
ROLLUP_SOURCES: dict[str, str | None] = {
    "requests": None,
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cost_usd": "cost_usd",
    "energy_wh": "energy_wh",
    "carbon_g": "carbon_g",
    "unbilled_events": None,
    "unbilled_input_tokens": "input_tokens",
    "unbilled_output_tokens": "output_tokens",
    "unbilled_cost_usd": "cost_usd",
    "unbilled_energy_wh": "energy_wh",
    "unbilled_carbon_g": "carbon_g",
}
ROLLUP_KEY = ("day", "tenant", "backend", "model")


def _rollup_type(name: str) -> str:
    if name == "day":
        return "day"
    source = ROLLUP_SOURCES.get(name, "")
    if source is None or source.endswith("tokens"):
        return "count"
    return "float" if name in ROLLUP_SOURCES else "text"


def events_table(d: Dialect) -> str:
    cols = ",\n    ".join(
        f"{c} {_TYPES[t][d]}" + ("" if c in _NULLABLE else " NOT NULL") + (" PRIMARY KEY" if c == "event_id" else "")
        for c, t in EVENT_TYPES.items()
    )
    return f"CREATE TABLE usage_events (\n    {cols}\n)"


def rollups_table(d: Dialect) -> str:
    cols = ",\n    ".join(
        f"{c} {_TYPES[_rollup_type(c)][d]}" + ("" if c == "zone" else " NOT NULL") for c in ROLLUP_COLUMNS
    )
    return f"CREATE TABLE usage_daily (\n    {cols},\n    PRIMARY KEY ({', '.join(ROLLUP_KEY)})\n)"


def rollup_upsert_set(table: str = "usage_daily") -> str:
    """The ON CONFLICT DO UPDATE assignments adding new sums to a day's row."""
    sums = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in ROLLUP_SOURCES)
    return (
        f"{sums}, backend_class = excluded.backend_class, zone = excluded.zone, "
        f"energy_source = CASE WHEN {table}.energy_source = excluded.energy_source "
        f"THEN {table}.energy_source ELSE 'mixed' END"
    )


_INDEXES = (
    "CREATE INDEX usage_events_tenant_ts ON usage_events (tenant, ts, event_id)",
    "CREATE INDEX usage_events_ts ON usage_events (ts, event_id)",
)


def _sqlite_trigger() -> str:
    values = ", ".join(
        ("NEW.billed" if src is None else f"NEW.billed * NEW.{src}")
        if not name.startswith("unbilled_")
        else ("1 - NEW.billed" if src is None else f"(1 - NEW.billed) * NEW.{src}")
        for name, src in ROLLUP_SOURCES.items()
    )
    # A trigger fires only for rows actually inserted: a duplicate event id ignored by
    # ON CONFLICT DO NOTHING adds nothing to the rollups, in the events' own transaction.
    return (
        "CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events BEGIN "
        f"INSERT INTO usage_daily ({', '.join(ROLLUP_COLUMNS)}) VALUES (date(NEW.ts, 'unixepoch'), NEW.tenant, "
        f"NEW.backend, NEW.model, NEW.backend_class, NEW.zone, NEW.energy_source, {values}) "
        f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {rollup_upsert_set()}; END"
    )


def rollup_select(d: Dialect, source: str) -> str:
    """SELECT of rollup rows summing the events in ``source`` (a table or CTE name)."""
    day = "date(ts, 'unixepoch')" if d == "sqlite" else "(to_timestamp(ts) AT TIME ZONE 'UTC')::date"
    billed = "billed = 1" if d == "sqlite" else "billed"
    sums = []
    for name, src in ROLLUP_SOURCES.items():
        cond = f"NOT ({billed})" if name.startswith("unbilled_") else billed
        expr = "1" if src is None else src
        sums.append(f"COALESCE(SUM(CASE WHEN {cond} THEN {expr} ELSE 0 END), 0)")
    return (
        f"SELECT {day} AS day, tenant, backend, model, MAX(backend_class), MAX(zone), "
        "CASE WHEN MIN(energy_source) = MAX(energy_source) THEN MIN(energy_source) ELSE 'mixed' END, "
        f"{', '.join(sums)} FROM {source} GROUP BY 1, tenant, backend, model"
    )


_LEGACY_SQLITE = """CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL, tenant TEXT NOT NULL, backend TEXT NOT NULL, backend_class TEXT NOT NULL,
    zone TEXT, model TEXT NOT NULL, endpoint TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, energy_wh REAL NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL,
    outcome TEXT NOT NULL, tokens_source TEXT NOT NULL, attempts INTEGER NOT NULL, stream INTEGER NOT NULL
)"""
_LEGACY_COPY = (
    "INSERT INTO usage_events SELECT request_id || ':' || attempts, request_id, ts, tenant, backend, backend_class, "
    "zone, model, endpoint, input_tokens, output_tokens, cost_usd, energy_wh, latency_ms, ttft_ms, outcome, "
    "tokens_source, attempts, stream, attempts, 'request', 1, NULL, 0.0, "
    "CASE WHEN energy_wh > 0 THEN 'declared' ELSE 'none' END, NULL FROM usage"
)

#: Ordered steps; a store at version N applies steps N+1.. at start.
SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first release's table, one row per request (a no-op on databases it created).
    (_LEGACY_SQLITE, "CREATE INDEX IF NOT EXISTS usage_tenant_ts ON usage (tenant, ts)"),
    # 2: one row per event, keyed by event id; the first release's rows become billed requests.
    (events_table("sqlite"), *_INDEXES, _LEGACY_COPY, "DROP TABLE usage"),
    # 3: daily rollups, kept by a trigger in the events' own transaction, back-filled once.
    (
        rollups_table("sqlite"),
        _sqlite_trigger(),
        f"INSERT INTO usage_daily ({', '.join(ROLLUP_COLUMNS)}) {rollup_select('sqlite', 'usage_events')}",
    ),
)

POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: events and their daily rollups (the store has no earlier history).
    (events_table("postgres"), *_INDEXES, rollups_table("postgres")),
)
