"""`fedrouter import litellm CONFIG`: a LiteLLM proxy config converted into a fedrouter config.

The config goes to stdout (or ``--output``), the notes to stderr, what has no equivalent last.
The result is checked with the same validation ``fedrouter check-config`` runs before it is
written, so a conversion never leaves a file the gateway would refuse (the environment variables
it references aside: those are the operator's to set, and the notes list them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from router.cli.import_notes import report
from router.cli.litellm_config import Json, Options, convert
from router.config import parse_config
from router.config.base import SECRET_REF

CLASSES = ("datacenter", "sovereign", "volunteer")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser("import", help="convert another gateway's config into a fedrouter config")
    kinds = imp.add_subparsers(dest="import_kind", required=True)
    lit = kinds.add_parser("litellm", help="a LiteLLM proxy config (model_list, router_settings ...)")
    lit.add_argument("config", help="the LiteLLM config.yaml")
    lit.add_argument("--output", help="file to write (default: stdout)")
    lit.add_argument(
        "--class", dest="backend_class", default="datacenter", choices=CLASSES, help="every backend's class"
    )
    lit.add_argument("--tenant", default="default", help="the tenant the config declares (default: default)")
    lit.set_defaults(func=import_litellm)


def import_litellm(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    out, notes = convert(raw, Options(args.backend_class, args.tenant))
    _check(out)
    text = f"# Converted from {path.name} by `fedrouter import litellm`; check it with `fedrouter check-config`.\n"
    text += yaml.safe_dump(out, sort_keys=False, allow_unicode=True)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    report(notes, sys.stderr)
    return 0


@contextlib.contextmanager
def _placeholders(names: set[str]) -> Iterator[None]:
    """The referenced variables not set here, set for the check only: that they are set where
    fedrouter serves is the operator's part, and the notes list them."""
    missing = [n for n in names if n not in os.environ]
    for name in missing:
        os.environ[name] = "set-for-the-check"
    try:
        yield
    finally:
        for name in missing:
            del os.environ[name]


def _check(out: Json) -> None:
    refs = {m.group(1) for b in out["backends"] if (m := SECRET_REF.match(b.get("api_key") or ""))}
    with _placeholders(refs):
        parse_config(out, "the converted config")  # a ConfigError here is the converter's fault


__all__ = ["CLASSES", "add_parser", "import_litellm"]
