"""Backend types by name, imported only when a config chooses them (litellm costs seconds)."""

from __future__ import annotations

import importlib
from typing import Any

from providers.base import Provider

KINDS: dict[str, str] = {
    "openai": "providers.openai_compat:OpenAICompatProvider",
    "litellm": "providers.litellm_backed:LiteLLMProvider",
}


def provider_class(kind: str) -> type[Any]:
    try:
        target = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown backend type {kind!r}; known types: {', '.join(KINDS)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]  # KINDS names classes


def build(kind: str, *args: Any, **kwargs: Any) -> Provider:
    return provider_class(kind)(*args, **kwargs)  # type: ignore[no-any-return]  # KINDS names Providers
