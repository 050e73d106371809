"""`fedrouter keys …` and `fedrouter tenants …`: the admin API's tenant and key commands, offline.

They write the same SQLite file the gateway reads (``--ledger`` or ``FEDROUTER_KEYS_DB``); a
running gateway sees a new key at once, a revoked one within ``key_cache_s`` seconds, and a new
or changed tenant within the same time. Every error is one line on stderr and exit status 2,
and nothing is written.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from router.config import RateLimits, TenantConfig, load_config
from router.errors import GatewayError
from router.settings import Settings
from router.tenancy.keys import KeyRecord, KeyStore


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(Settings(**({"ledger": args.ledger} if args.ledger else {})).keys_path())


def _number(flag: str, value: str | None, kind: type[int] | type[float]) -> int | float | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{flag} {value!r}: expected {'an integer' if kind is int else 'a number'}") from None


_Model = TypeVar("_Model", bound=BaseModel)


def _valid(build: type[_Model], where: str, **fields: object) -> _Model:
    try:
        return build.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where}{': ' + loc if loc else ''}: {err['msg'].removeprefix('Value error, ')}") from None


def _limits(args: argparse.Namespace) -> RateLimits | None:
    fields = {
        "requests_per_minute": _number("--rpm", args.rpm, int),
        "tokens_per_minute": _number("--tpm", args.tpm, int),
        "concurrent_streams": _number("--concurrent-streams", args.concurrent_streams, int),
    }
    given = {k: v for k, v in fields.items() if v is not None}
    return _valid(RateLimits, "limits", **given) if given else None


def _budget(spec: str) -> dict[str, object]:
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"--budget {spec!r}: expected METRIC:PERIOD:HARD[:SOFT], e.g. usd:monthly:100:80")
    out: dict[str, object] = {"metric": parts[0], "period": parts[1]}
    for name, value in zip(("hard", "soft"), parts[2:], strict=False):
        if value:
            out[name] = _number(f"--budget {spec!r}: {name}", value, float)
    return out


def _tenants(store: KeyStore, config_path: str | None) -> dict[str, TenantConfig]:
    known = {name: TenantConfig.model_validate_json(spec) for name, spec, _ in store.tenants()}
    if config_path:
        known.update({t.name: t for t in load_config(config_path).tenants})
    return known


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(record: KeyRecord) -> str:
    now = time.time()
    limits = record.limits.model_dump(exclude_none=True) if record.limits else {}
    return (
        f"{record.key_id}  {record.tenant:<16} {record.status(now):<8} created {_when(record.created)}  "
        f"expires {_when(record.expires_at)}  name {record.name or '-'}  "
        f"models {','.join(sorted(record.models)) if record.models else 'all'}  "
        f"limits {','.join(f'{k}={v}' for k, v in limits.items()) or 'tenant'}"
    )


def keys_create(args: argparse.Namespace) -> int:
    from router.tenancy.tenants import check_key_limits

    store = _store(args)
    try:
        tenants = _tenants(store, args.config)
        tenant = tenants.get(args.tenant)
        if tenant is None:
            raise ValueError(f"unknown tenant {args.tenant!r} (tenants: {', '.join(sorted(tenants)) or 'none'})")
        expires = _number("--expires-in", args.expires_in, float)
        if expires is not None and expires <= 0:
            raise ValueError(f"--expires-in {args.expires_in!r}: must be a positive number of seconds")
        limits = _limits(args)
        try:
            check_key_limits(tenant.limits, limits)
        except GatewayError as exc:
            raise ValueError(exc.message) from None
        key, record = store.create(
            args.tenant,
            name=args.name,
            models=args.model or None,
            limits=limits,
            expires_at=None if expires is None else time.time() + expires,
        )
    finally:
        store.close()
    print(f"Created {record.key_id} for tenant {record.tenant}. It is shown once; store it now:")
    print(key)
    return 0


def _sha256(value: str, where: str) -> str:
    # The value is not echoed: a plaintext key given by mistake must not reach a terminal or a log.
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError(f"{where}: not a SHA-256 hash (expected 64 hexadecimal digits, got {len(value)} characters)")
    return value


def _hashes(args: argparse.Namespace) -> list[str]:
    """The hashes given by --sha256 and --file (one a line; blank lines and # comments skipped)."""
    hashes = [_sha256(h, "--sha256") for h in args.sha256 or ()]
    if args.file:
        for n, line in enumerate(Path(args.file).read_text().splitlines(), 1):
            if value := line.split("#", 1)[0].strip():
                hashes.append(_sha256(value, f"{args.file}:{n}"))
    if not hashes:
        raise ValueError("give --sha256 HEX or --file FILE (one SHA-256 hash a line)")
    return hashes


def keys_import(args: argparse.Namespace) -> int:
    """Store keys by the SHA-256 of their secrets, so that clients of another gateway (LiteLLM
    stores exactly this digest) keep their keys. All or nothing: a bad line writes none."""
    from router.tenancy.tenants import check_key_limits

    hashes = _hashes(args)
    limits = _limits(args)
    store = _store(args)
    try:
        tenants = _tenants(store, args.config)
        tenant = tenants.get(args.tenant)
        if tenant is None:
            raise ValueError(f"unknown tenant {args.tenant!r} (tenants: {', '.join(sorted(tenants)) or 'none'})")
        try:
            check_key_limits(tenant.limits, limits)
        except GatewayError as exc:
            raise ValueError(exc.message) from None
        models = args.model or None
        records = [store.import_hash(args.tenant, h, name=args.name, models=models, limits=limits) for h in hashes]
    finally:
        store.close()
    for record in records:
        if record is not None:
            print(f"Imported {record.key_id} for tenant {record.tenant}.")
    if skipped := sum(r is None for r in records):
        print(f"{skipped} hash(es) already stored: skipped.", file=sys.stderr)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        records = store.list_keys(args.tenant)
    finally:
        store.close()
    for record in records:
        print(_show(record))
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        old = store.get(args.key_id)
        if old is None:
            raise ValueError(f"no API key with id {args.key_id!r}")
        if store.revoke(args.key_id) is None:
            raise ValueError(f"API key {args.key_id} is revoked already")
    finally:
        store.close()
    print(f"Revoked {args.key_id} (tenant {old.tenant}).")
    return 0


def keys_rotate(args: argparse.Namespace) -> int:
    grace = _number("--grace", args.grace, float) or 0.0
    if grace < 0:
        raise ValueError(f"--grace {args.grace!r}: must not be negative")
    store = _store(args)
    try:
        if store.get(args.key_id) is None:
            raise ValueError(f"no API key with id {args.key_id!r}")
        rotated = store.rotate(args.key_id, grace)
        if rotated is None:
            raise ValueError(f"API key {args.key_id} is revoked already")
    finally:
        store.close()
    key, record = rotated
    print(
        f"Rotated {args.key_id} into {record.key_id}; the old key stops working in {grace:g}s. "
        "The new key is shown once; store it now:"
    )
    print(key)
    return 0


def tenants_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        stored = {name: source for name, _, source in store.tenants()}
        tenants = _tenants(store, args.config)
    finally:
        store.close()
    for name, t in sorted(tenants.items()):
        budgets = ", ".join(f"{b.metric}/{b.period} hard={b.hard} soft={b.soft}" for b in t.budgets) or "none"
        limits = ", ".join(f"{k}={v}" for k, v in t.limits.model_dump(exclude_none=True).items()) or "none"
        print(f"{name:<16} source {stored.get(name, 'config')}  limits {limits}  budgets {budgets}")
    return 0


def tenants_create(args: argparse.Namespace) -> int:
    limits = _limits(args)
    fields: dict[str, object] = {
        "name": args.name,
        "policy": args.policy,
        "allow_volunteer": args.allow_volunteer,
        "budgets": [_budget(b) for b in args.budget or ()],
    }
    if limits is not None:
        fields["limits"] = limits.model_dump(exclude_none=True)
    tenant = _valid(TenantConfig, "tenant", **fields)
    store = _store(args)
    try:
        if tenant.name in _tenants(store, args.config) or not store.add_tenant(
            tenant.name, tenant.model_dump_json(exclude_defaults=True)
        ):
            raise ValueError(f"a tenant named {tenant.name!r} exists already")
    finally:
        store.close()
    print(f"Created tenant {tenant.name}.")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `keys` and `tenants` commands, on the main parser's subcommands."""
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key for a tenant; prints it once (last line)")
    _key_flags(create, "key")
    create.add_argument("--expires-in", help="seconds until the key stops working")
    create.set_defaults(func=keys_create)
    imp = keys.add_parser("import", help="store existing keys by their SHA-256 hash (clients keep their keys)")
    _key_flags(imp, "keys")
    imp.add_argument("--sha256", action="append", help="the hex SHA-256 of a key's secret (repeatable)")
    imp.add_argument("--file", help="a file of hex SHA-256 hashes, one a line")
    imp.set_defaults(func=keys_import)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant")
    listing.set_defaults(func=keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=keys_revoke)
    rotate = keys.add_parser("rotate", help="a new secret for a key; the old one is revoked (after --grace)")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", help="seconds the old secret keeps working (default 0)")
    rotate.set_defaults(func=keys_rotate)

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="tenants_command", required=True)
    tlist = tenants.add_parser("list", help="tenants of the config file and of the database")
    tlist.add_argument("--config")
    tlist.set_defaults(func=tenants_list)
    tcreate = tenants.add_parser("create", help="create a tenant in the database (as the admin API does)")
    tcreate.add_argument("name")
    tcreate.add_argument("--config", help="refuse a name the config file declares")
    tcreate.add_argument("--policy", default="balanced", help="a preset name")
    tcreate.add_argument("--allow-volunteer", action="store_true")
    tcreate.add_argument("--budget", action="append", help="METRIC:PERIOD:HARD[:SOFT], e.g. usd:monthly:100:80")
    _limit_flags(tcreate)
    tcreate.set_defaults(func=tenants_create)
    for cmd in (create, imp, listing, revoke, rotate, tlist, tcreate):
        cmd.add_argument("--ledger", help="ledger URL whose SQLite file holds the keys (default $FEDROUTER_LEDGER)")


def _key_flags(cmd: argparse.ArgumentParser, what: str) -> None:
    """The flags that describe new keys, made or imported: whose, their label, models and limits."""
    cmd.add_argument("--tenant", required=True)
    cmd.add_argument("--config", help="the config file declaring the tenant (API tenants need none)")
    cmd.add_argument("--name", help=f"a label for the {what}")
    cmd.add_argument("--model", action="append", help=f"a model the {what} may use (repeatable; default: all)")
    _limit_flags(cmd)


def _limit_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--rpm", help="requests per minute")
    cmd.add_argument("--tpm", help="tokens per minute")
    cmd.add_argument("--concurrent-streams", help="streams at once")
