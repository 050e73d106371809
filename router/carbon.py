"""Grid carbon intensity by zone: EcoLogits' electricity mixes, overridable from a file.

It sits below the config because validating a config means checking its zones against this
table, and above nothing of the router's: fleet/energy.py turns it into grams per request.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import orjson
import yaml

WORLD = "WOR"  # EcoLogits' world-average mix, for a backend with no zone


class UnknownZone(ValueError):
    """A zone that neither EcoLogits' table nor the intensity file knows."""


def ecologits_file(name: str) -> Path:
    spec = importlib.util.find_spec("ecologits")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ecologits package is needed for grid carbon intensities")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _alpha3(zone: str) -> str | None:
    from iso3166 import countries  # a small, self-contained table of ISO 3166-1 codes

    entry = countries.get(zone, None)
    return None if entry is None else entry.alpha3


class CarbonTable:
    """Grid carbon intensity in gCO2e per kWh by zone: EcoLogits' electricity mixes, then the
    zones of an optional YAML/JSON file ``{zone: gCO2e_per_kWh}`` on top."""

    def __init__(self, intensity_file: str | Path | None = None) -> None:
        raw = orjson.loads(ecologits_file("electricity_mixes.json").read_bytes())
        # EcoLogits gives kgCO2e per kWh.
        self._mixes = {m["name"]: float(m["gwp"]) * 1000.0 for m in raw["electricity_mixes"]}
        self._file = Path(intensity_file) if intensity_file else None
        self._overrides: dict[str, float] = self._read_file() if self._file else {}

    def _read_file(self) -> dict[str, float]:
        assert self._file is not None
        try:
            data = yaml.safe_load(self._file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"carbon.intensity_file: cannot read {self._file}: {exc}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise ValueError(f"carbon.intensity_file: {self._file} must map zones to gCO2e/kWh")
        out: dict[str, float] = {}
        for zone, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise ValueError(f"carbon.intensity_file: zone {zone!r}: {value!r} is not a gCO2e/kWh figure")
            out[str(zone).upper()] = float(value)
        return out

    def refresh(self) -> int:
        """Re-read the intensity file (blocking: call it off the event loop); zones it now sets."""
        if self._file is not None:
            self._overrides = self._read_file()
        return len(self._overrides)

    def canonical(self, zone: str) -> str | None:
        """The table's key for a zone as written (``FR`` -> ``FRA``), or None if unknown."""
        key = zone.upper()
        if key in self._overrides or key in self._mixes:
            return key
        alpha3 = _alpha3(key) if len(key) == 2 else None
        if alpha3 is not None and (alpha3 in self._overrides or alpha3 in self._mixes):
            return alpha3
        return None

    def intensity(self, zone: str | None) -> float:
        """gCO2e per kWh; a backend without a zone gets the world average."""
        key = WORLD if zone is None else self.canonical(zone)
        if key is None:
            raise UnknownZone(
                f"unknown grid zone {zone!r}: not in EcoLogits' electricity mixes "
                "(ISO 3166-1 codes) nor in carbon.intensity_file"
            )
        return self._overrides.get(key, self._mixes.get(key, 0.0))
