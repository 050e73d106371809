"""The `fedrouter` command: serve, demo, keys, usage, export, payouts, import, check-config, local-model."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from pydantic import ValidationError

from router.config import ConfigError, FederationConfig, TenantConfig, load_config
from router.settings import Settings

if TYPE_CHECKING:
    from router.http.asgi import GatewayApp
    from router.ledger import Ledger

_CONFIG_ENV = "FEDROUTER_CONFIG"


def app_factory() -> GatewayApp:
    """Each worker process builds its own app from the environment the parent set."""
    from router.app import create_app

    return create_app(load_config(os.environ[_CONFIG_ENV]), Settings())


def _fail(message: str) -> int:
    print(f"fedrouter: {message}", file=sys.stderr)
    return 2


def _setting_error(exc: ValidationError) -> str:
    """A settings error as one line: the first problem, which names its variable."""
    first = exc.errors()[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    name = "FEDROUTER_" + "_".join(str(part) for part in first["loc"]).upper()
    return msg if msg.startswith("FEDROUTER_") else f"{name}: {msg}"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**{k: v for k in ("ledger", "state") if (v := getattr(args, k, None))})


def _limits_per_process(config: FederationConfig, settings: Settings) -> list[str]:
    """The limits and budgets, declared or stored, that workers without shared state would each
    enforce on their own."""
    from router.tenancy.keys import KeyStore
    from router.tenancy.tenants import per_process_limits

    store = KeyStore(settings.keys_path())
    try:
        declared = {t.name for t in config.tenants}
        stored = [
            TenantConfig.model_validate_json(spec)
            for name, spec, source in store.tenants()
            if source == "api" and name not in declared
        ]
        return per_process_limits([*config.tenants, *stored], store.list_keys())
    finally:
        store.close()


def _serve(args: argparse.Namespace) -> int:
    from router.http import workers as server

    if args.workers < 1:
        return _fail(f"--workers {args.workers}: give at least 1")
    config = load_config(args.config)  # checked here, so a bad config fails before any worker starts
    settings = _settings(args)
    if args.workers > 1 and settings.state is None and (held := _limits_per_process(config, settings)):
        return _fail(
            f"--workers {args.workers} without --state would enforce rate limits and budgets in each "
            f"worker separately, each allowing the whole amount ({', '.join(held)}); "
            "pass --state redis://HOST:PORT/DB, or serve with one worker"
        )
    if args.ledger:
        os.environ["FEDROUTER_LEDGER"] = args.ledger
    if args.state:
        os.environ["FEDROUTER_STATE"] = args.state  # for the workers, which read the environment
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sock = server.bind_for_workers(args.host, args.port) if args.workers > 1 else server.bind(args.host, args.port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    if settings.admin_key is None:
        print("fedrouter: FEDROUTER_ADMIN_KEY is not set: the admin API and /metrics are off", file=sys.stderr)
    if args.workers > 1:
        os.environ[_CONFIG_ENV] = str(Path(args.config).resolve())
        os.environ["FEDROUTER_WORKERS"] = str(args.workers)
        return server.run_workers(args.workers, sock, app_factory)
    from router.app import create_app

    host, port = sock.getsockname()[:2]
    server.run(
        create_app(config, settings),
        sock,
        lambda: print(f"fedrouter serving on http://{host}:{port}", file=sys.stderr, flush=True),
    )
    return 0


def _usage(args: argparse.Namespace) -> int:
    from router.ledger import open_ledger

    async def totals() -> dict[str, Any]:
        ledger = open_ledger(_settings(args).ledger)
        await ledger.start()
        try:
            return await ledger.totals(args.tenant)
        finally:
            await ledger.close()

    t = asyncio.run(totals())
    print(f"tenant:        {args.tenant}")
    print(f"requests:      {t['requests']}")
    print(f"input tokens:  {t['input_tokens']}")
    print(f"output tokens: {t['output_tokens']}")
    print(f"cost (USD):    {float(t['cost_usd']):.6f}")
    print(f"energy (Wh):   {float(t['energy_wh']):.6f}")
    return 0


_Choice = TypeVar("_Choice", bound=str)


def _one_of(value: str, allowed: tuple[_Choice, ...], flag: str) -> _Choice:
    for choice in allowed:
        if value == choice:
            return choice
    raise ValueError(f"{flag} {value!r}: expected one of {', '.join(allowed)}")


def _period(args: argparse.Namespace) -> tuple[date, date]:
    try:
        start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    except ValueError:
        raise ValueError(f"--from {args.start!r} / --to {args.end!r}: expected ISO dates (YYYY-MM-DD)") from None
    from router.ledger.base import out_of_range

    for flag, day in (("--from", start), ("--to", end)):
        if (why := out_of_range(day)) is not None:
            raise ValueError(f"{flag} {why}")
    if start > end:
        raise ValueError(f"--from {start} is after --to {end}")
    return start, end


def _write_export(args: argparse.Namespace, body: Callable[[Ledger], AsyncIterator[bytes]]) -> int:
    """Stream an export from the ledger to --output (or stdout), chunk by chunk."""
    from router.ledger import ledger_kind, open_ledger, sqlite_path

    url = _settings(args).ledger
    if ledger_kind(url) == "sqlite" and not Path(sqlite_path(url)).exists():
        raise ValueError(f"no ledger at {sqlite_path(url)} (give --ledger URL)")

    async def run(out: BinaryIO) -> None:
        ledger = open_ledger(url)
        await ledger.start()
        try:
            async for chunk in body(ledger):
                out.write(chunk)
        finally:
            await ledger.close()

    with open(args.output, "wb") if args.output else contextlib.nullcontext(sys.stdout.buffer) as out:
        asyncio.run(run(out))
    return 0


def _export(args: argparse.Namespace) -> int:
    from router.ledger.exports import FORMATS, GRANULARITIES, export, usage_rows

    start, end = _period(args)
    fmt = _one_of(args.format, FORMATS, "--format")
    granularity = _one_of(args.granularity, GRANULARITIES, "--granularity")
    if args.config and args.tenant and load_config(args.config).tenant(args.tenant) is None:
        raise ValueError(f"unknown tenant {args.tenant!r} (not in {args.config})")
    return _write_export(
        args, lambda ledger: export(usage_rows(ledger, args.tenant, start, end, granularity), fmt, granularity)
    )


def _payouts(args: argparse.Namespace) -> int:
    from router.ledger.exports import PAYOUT_FORMATS, export_payouts

    start, end = _period(args)
    fmt = _one_of(args.format, PAYOUT_FORMATS, "--format")

    async def body(ledger: Ledger) -> AsyncIterator[bytes]:
        async for chunk in export_payouts(await ledger.payouts(start, end), fmt):
            yield chunk

    return _write_export(args, body)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check(args: argparse.Namespace) -> int:
    from router.fleet.pricing import PriceMap
    from router.fleet.wiring import backend_info, unpriced

    config: FederationConfig = load_config(args.config)
    prices = PriceMap()
    for warning in unpriced(backend_info(b, prices) for b in config.backends):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok ({_count(len(config.backends), 'backend')}, {_count(len(config.tenants), 'tenant')})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from router.cli.demo import run_demo

    return run_demo(args.host, args.port, args.ledger or "sqlite:///fedrouter-demo.db")


def _local_model(args: argparse.Namespace) -> int:
    from router.sim.local_model import main as local_main

    local_main(["--port", str(args.port)])
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedrouter", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--ledger", help="ledger URL (default sqlite:///fedrouter.db or $FEDROUTER_LEDGER)")
    serve.add_argument("--log-level", default="warning")
    serve.add_argument(
        "--state",
        help="shared state for limits, budgets and stats: redis://HOST:PORT/DB "
        "(default: this process only, or $FEDROUTER_STATE)",
    )
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="run the gateway with local demo backends of every class")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--ledger")
    demo.set_defaults(func=_demo)

    from router.cli.tenants import add_parsers

    add_parsers(sub)  # keys create|list|revoke|rotate, tenants list|create

    usage = sub.add_parser("usage", help="print a tenant's usage totals")
    usage.add_argument("--tenant", required=True)
    usage.add_argument("--ledger")
    usage.set_defaults(func=_usage)

    export = sub.add_parser("export", help="export usage as CSV, JSON Lines or FOCUS 1.2")
    export.add_argument("--tenant", help="one tenant (default: all)")
    export.add_argument("--format", default="csv", help="csv | jsonl | focus")
    export.add_argument("--granularity", default="request", help="request (events) | daily (rollups)")
    export.add_argument("--config", help="check --tenant against this config")
    payouts = sub.add_parser("payouts", help="per-backend tokens, revenue and energy, for operator payouts")
    payouts.add_argument("--format", default="csv", help="csv | jsonl")
    for cmd, func in ((export, _export), (payouts, _payouts)):
        cmd.add_argument("--from", dest="start", required=True, help="first UTC day, YYYY-MM-DD")
        cmd.add_argument("--to", dest="end", required=True, help="last UTC day (included), YYYY-MM-DD")
        cmd.add_argument("--ledger", help="ledger URL (default sqlite:///fedrouter.db or $FEDROUTER_LEDGER)")
        cmd.add_argument("--output", help="file to write (default: stdout)")
        cmd.set_defaults(func=func)

    from router.cli.importer import add_parser as add_import

    add_import(sub)  # import litellm

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("config")
    check.set_defaults(func=_check)

    local = sub.add_parser("local-model", help="serve the bundled SmolLM2 model with llama.cpp (fedrouter[local])")
    local.add_argument("--port", type=int, default=9010)
    local.set_defaults(func=_local_model)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as exc:
        code = _fail(f"invalid config:\n{exc}")
    except ValidationError as exc:  # the settings, from the environment
        code = _fail(_setting_error(exc))
    except (ValueError, OSError) as exc:
        code = _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    sys.exit(code)
