"""Live per-backend measurements and the circuit breaker that ejects failing backends.

Only failures that are the backend's fault are counted: a request the backend rejected as
invalid, or a client that went away, says nothing about the backend's health.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from policies.base import Stats

_ALPHA = 0.3  # EWMA weight of the newest sample: recent enough to move traffic within a few requests


@dataclass(slots=True)
class _Entry:
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    error_ewma: float = 0.0
    inflight: int = 0
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    requests: int = 0
    failures: int = 0
    last_success: float | None = None


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + _ALPHA * (sample - old)


class StatsBook:
    """In-process backend statistics, read by the router on every request."""

    def __init__(
        self,
        eject_after_failures: int = 3,
        eject_seconds: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._eject_after = eject_after_failures
        self._eject_base = eject_seconds
        self._clock = clock

    def _entry(self, backend: str) -> _Entry:
        entry = self._entries.get(backend)
        if entry is None:
            entry = self._entries[backend] = _Entry()
        return entry

    def view(self, backend: str) -> Stats:
        e = self._entries.get(backend)
        if e is None:
            return Stats()
        return Stats(
            ttft_s=e.ttft_s,
            tokens_per_s=e.tokens_per_s,
            error_rate=e.error_ewma,
            inflight=e.inflight,
            ejected=e.ejected_until > self._clock(),
        )

    def started(self, backend: str) -> None:
        e = self._entry(backend)
        e.inflight += 1
        e.requests += 1

    def finished(self, backend: str) -> None:
        e = self._entry(backend)
        e.inflight = max(0, e.inflight - 1)

    def success(self, backend: str, ttft_s: float | None, output_tokens: int, generation_s: float) -> None:
        e = self._entry(backend)
        if ttft_s is not None:
            e.ttft_s = _ewma(e.ttft_s, ttft_s)
        # Throughput needs enough tokens and time to mean anything.
        if output_tokens >= 4 and generation_s > 1e-4:
            e.tokens_per_s = _ewma(e.tokens_per_s, output_tokens / generation_s)
        e.error_ewma = _ewma(e.error_ewma, 0.0)
        e.consecutive_failures = 0
        e.ejections = 0
        e.last_success = self._clock()

    def failure(self, backend: str) -> None:
        e = self._entry(backend)
        e.failures += 1
        e.error_ewma = _ewma(e.error_ewma, 1.0)
        e.consecutive_failures += 1
        if e.consecutive_failures >= self._eject_after:
            # Ejection grows with each repeat; the next request after it lapses is the probe.
            e.ejections += 1
            e.ejected_until = self._clock() + min(self._eject_base * e.ejections, self._eject_base * 10)
            e.consecutive_failures = 0

    def snapshot(self, backend: str) -> dict[str, float | int | bool | None]:
        e = self._entry(backend)
        now = self._clock()
        return {
            "ttft_s": e.ttft_s,
            "tokens_per_s": e.tokens_per_s,
            "error_rate": round(e.error_ewma, 4),
            "inflight": e.inflight,
            "requests": e.requests,
            "failures": e.failures,
            "ejected": e.ejected_until > now,
            "ejected_for_s": max(0.0, round(e.ejected_until - now, 3)),
        }
