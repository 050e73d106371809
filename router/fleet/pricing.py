"""Default prices for known commercial models, from the price map litellm ships in its wheel.

Read from the JSON file directly: importing litellm costs seconds and, unless told otherwise,
fetches a fresh map over the network, which fedrouter must never do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson

_FILE = "model_prices_and_context_window_backup.json"


class PriceMap:
    """USD per 1M tokens (input, output) by model name, loaded on first use."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._prices: dict[str, tuple[float, float]] | None = None

    def _load(self) -> dict[str, tuple[float, float]]:
        path = self._path
        if path is None:
            spec = importlib.util.find_spec("litellm")
            if spec is None or not spec.submodule_search_locations:
                return {}
            path = Path(next(iter(spec.submodule_search_locations))) / _FILE
        raw = orjson.loads(path.read_bytes())
        prices: dict[str, tuple[float, float]] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict):
                continue
            pin, pout = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if isinstance(pin, int | float) and isinstance(pout, int | float):
                prices[name] = (pin * 1e6, pout * 1e6)
        return prices

    def lookup(self, model: str) -> tuple[float, float] | None:
        if self._prices is None:
            self._prices = self._load()
        # litellm keys some models with a provider prefix ("anthropic/claude-..."); try both.
        return self._prices.get(model) or self._prices.get(model.split("/", 1)[-1])
