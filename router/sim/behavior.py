"""How the simulated backend answers: latency, throughput and injected faults, changeable while it runs.

Tests and the benchmark change it through ``POST /_sim/behavior``; ``update`` checks every field
first, so a mistyped change leaves the behaviour as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class SimBehavior:
    """How the simulated backend answers; every field can be changed at run time."""

    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    fail_status: int = 0
    fail_count: int = -1
    stall_s: float = 0.0
    stall_probability: float = 1.0  # the share of streams that stall for stall_s (seeded by the sim's name)
    drop_after_chunks: int = -1
    omit_usage: bool = False
    power_watts: float | None = None
    reply: str = "The quick brown fox jumps over the lazy dog."

    def update(self, changes: dict[str, Any]) -> None:
        """Apply all changes or none; raise ValueError on an unknown or mistyped field."""
        defaults = dataclasses.asdict(SimBehavior())
        for key, value in changes.items():
            if key not in defaults:
                raise ValueError(f"unknown behavior field {key!r}")
            numeric = isinstance(defaults[key], float) or key == "power_watts"
            fits = type(value) in (int, float) if numeric else type(value) is type(defaults[key])
            if not fits and not (key == "power_watts" and value is None):
                raise ValueError(f"behavior field {key!r} cannot be {value!r}")
        if changes.get("fail_status", 0) not in (0, *range(400, 600)):
            raise ValueError("fail_status must be 0 or an HTTP error status (400-599)")
        for key, value in changes.items():
            numeric = isinstance(defaults[key], float) or (key == "power_watts" and value is not None)
            setattr(self, key, float(value) if numeric else value)

    def take_failure(self) -> int:
        """Return the status the current request must fail with (0: none), consuming ``fail_count``."""
        status = self.fail_status
        if not status:
            return 0
        if self.fail_count > 0:
            self.fail_count -= 1
        elif self.fail_count == 0:
            status = 0
        if self.fail_count == 0:
            self.fail_status, self.fail_count = 0, -1
        return status
