"""One (backend, model)'s live figures in the stats book: its window of samples, its in-flight
counts here and on the other replicas, its ejection state and its cached view, and the snapshot
the admin API shows of them. Kept apart from ``StatsBook``, which decides when they change."""

from __future__ import annotations

from typing import Any

from policies.base import Stats
from router.state.base import Ejection
from router.state.samples import Window

KEEP = 200  # samples per key: enough for a stable p95
HORIZON_S = 60.0  # samples older than this say little about the backend now


class Entry:
    __slots__ = (
        "attempts",
        "changed",
        "ejection",
        "failures",
        "inflight",
        "others",
        "probing",
        "since",
        "view",
        "window",
    )

    def __init__(self) -> None:
        self.window = Window(KEEP, HORIZON_S)
        self.inflight = 0  # this process
        self.others = 0  # the other replicas, as last pulled
        self.ejection: Ejection | None = None  # kept after it lapses: half-open until a probe succeeds
        self.changed = 0.0  # monotonic time of the last local ejection change
        self.since = 0.0  # samples before this (the end of the last ejection) do not count towards one
        self.probing = False  # this process holds (or is claiming) the probe
        self.attempts = 0
        self.failures = 0
        self.view: tuple[Stats, float] | None = None  # cached view, valid until the given unix time

    def snapshot(self, now: float) -> dict[str, Any]:
        """The admin API's figures, at unix time ``now``."""
        s, q = self.window.summary(self.since), self.window.quantiles()
        until = self.ejection.until if self.ejection else 0.0
        return {
            "ttft_s": s.ttft_s,
            "ttft_p50_s": q.ttft_p50,
            "ttft_p95_s": q.ttft_p95,
            "tokens_per_s": s.tokens_per_s,
            "tokens_per_s_p50": q.tokens_per_s_p50,
            "tokens_per_s_p95": q.tokens_per_s_p95,
            "error_rate": round(s.error_rate, 4),
            "samples": len(self.window),
            "inflight": self.inflight + self.others,
            "requests": self.attempts,
            "failures": self.failures,
            "last_success": s.last_success,
            "ejected": until > now,
            "ejected_for_s": max(0.0, round(until - now, 3)),
            "ejections": self.ejection.count if self.ejection else 0,
        }
