"""The `fedrouter` command: serve, demo, keys, usage, check-config, local-model."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from router.config import ConfigError, FederationConfig, load_config
from router.settings import Settings

_CONFIG_ENV = "FEDROUTER_CONFIG"


def app_factory() -> object:
    """uvicorn's factory for multi-worker serving: each worker builds its own app."""
    from router.app import create_app

    return create_app(load_config(os.environ[_CONFIG_ENV]), Settings())


def _fail(message: str) -> int:
    print(f"fedrouter: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**({"ledger": args.ledger} if getattr(args, "ledger", None) else {}))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = load_config(args.config)
    settings = _settings(args)
    if args.ledger:
        os.environ["FEDROUTER_LEDGER"] = args.ledger
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False,
              "loop": "auto", "http": "auto"}
    if args.workers > 1:
        os.environ[_CONFIG_ENV] = str(Path(args.config).resolve())
        uvicorn.run("router.cli:app_factory", factory=True, workers=args.workers, **common)  # type: ignore[arg-type]
        return 0
    from router.app import create_app

    uvicorn.run(create_app(config, settings), **common)  # type: ignore[arg-type]
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from router.keys import KeyStore
    from router.ledger import sqlite_path

    config = load_config(args.config)
    if config.tenant(args.tenant) is None:
        names = ", ".join(t.name for t in config.tenants) or "none"
        return _fail(f"unknown tenant {args.tenant!r} (tenants in {args.config}: {names})")
    store = KeyStore(sqlite_path(_settings(args).ledger))
    try:
        key, record = store.create(args.tenant)
    finally:
        store.close()
    print(f"Created {record.key_id} for tenant {record.tenant}. It is shown once; store it now:")
    print(key)
    return 0


def _usage(args: argparse.Namespace) -> int:
    from router.ledger import open_ledger

    async def totals() -> dict[str, object]:
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
    print(f"cost (USD):    {float(t['cost_usd']):.6f}")  # type: ignore[arg-type]
    print(f"energy (Wh):   {float(t['energy_wh']):.6f}")  # type: ignore[arg-type]
    return 0


def _check(args: argparse.Namespace) -> int:
    config: FederationConfig = load_config(args.config)
    print(f"{args.config}: ok ({len(config.backends)} backends, {len(config.tenants)} tenants)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from router.demo import run_demo

    return run_demo(args.host, args.port, args.ledger or "sqlite:///fedrouter-demo.db")


def _local_model(args: argparse.Namespace) -> int:
    from router.local_model import main as local_main

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
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="run the gateway with local demo backends of every class")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--ledger")
    demo.set_defaults(func=_demo)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key for a tenant; prints it once (last line)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--config", required=True)
    create.add_argument("--ledger")
    create.set_defaults(func=_keys_create)

    usage = sub.add_parser("usage", help="print a tenant's usage totals")
    usage.add_argument("--tenant", required=True)
    usage.add_argument("--ledger")
    usage.set_defaults(func=_usage)

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
    except (ValueError, OSError) as exc:
        code = _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    sys.exit(code)
