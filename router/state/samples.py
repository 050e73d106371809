"""Outcome samples of one backend serving one model, and the sliding window summarising them.

A sample is one attempt's outcome: when it ended, whether it succeeded, and for successes the
time to first token and output tokens per second. Every replica pushes its samples to the store
and merges the others', so each sees the same window (deduplicated by sample id) and computes
the same EWMA, percentiles and error rate from it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

ALPHA = 0.3  # EWMA weight of the newest sample: recent enough to move traffic within a few requests


@dataclass(frozen=True, slots=True)
class Sample:
    ts: float  # unix seconds when the attempt ended
    ok: bool
    ttft_s: float | None
    tokens_per_s: float | None
    id: str  # "replica:seq", unique across replicas

    def encode(self) -> bytes:
        return f"{self.ts:.4f} {self.ok:d} {_num(self.ttft_s)} {_num(self.tokens_per_s)} {self.id}".encode()

    @staticmethod
    def decode(raw: bytes) -> Sample | None:
        try:
            ts, ok, ttft, tps, sid = raw.decode().split(" ")
            return Sample(float(ts), ok == "1", _opt(ttft), _opt(tps), sid)
        except ValueError:
            return None  # written by another version: skip rather than fail the sync


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.5g}"


def _opt(s: str) -> float | None:
    return None if s == "-" else float(s)


@dataclass(frozen=True, slots=True)
class Summary:
    """What the window says. Counts and the error rate cover samples since the last ejection
    ended (``since``); latency and throughput cover the whole window."""

    ttft_s: float | None = None  # EWMA
    tokens_per_s: float | None = None  # EWMA
    requests: int = 0
    failures: int = 0
    trailing_failures: int = 0
    last_success: float | None = None

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Quantiles:
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    ttft_samples: int = 0
    tokens_per_s_p50: float | None = None
    tokens_per_s_p95: float | None = None


class Window:
    """The newest ``keep`` samples of the last ``horizon_s`` seconds, ordered by time.

    The summary is kept up to date as samples arrive in time order (the common case: this
    replica's own); a sample from the past (another replica's) or a prune recomputes it once.
    """

    __slots__ = ("_dirty", "_horizon", "_ids", "_keep", "_quantiles", "_rows", "_since", "_summary", "_version")

    def __init__(self, keep: int = 200, horizon_s: float = 60.0) -> None:
        self._rows: list[Sample] = []
        self._ids: set[str] = set()
        self._keep = keep
        self._horizon = horizon_s
        self._version = 0
        self._since = 0.0
        self._summary = Summary()
        self._dirty = False
        self._quantiles: tuple[int, Quantiles] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, sample: Sample) -> bool:
        """Insert a sample; False if the window already has it (a replica's own, pulled back)."""
        if sample.id in self._ids:
            return False
        self._ids.add(sample.id)
        self._version += 1
        if not self._rows or sample.ts >= self._rows[-1].ts:
            self._rows.append(sample)
            if not self._dirty:
                self._summary = _fold(self._summary, sample, self._since)
        else:
            bisect.insort(self._rows, sample, key=lambda s: s.ts)
            self._dirty = True
        if len(self._rows) > self._keep:
            old = self._rows.pop(0)
            self._ids.discard(old.id)
            if old.ts >= self._since and not self._dirty:  # the EWMAs have long forgotten it
                s = self._summary  # built directly: dataclasses.replace costs more than the rest of add
                self._summary = Summary(
                    s.ttft_s,
                    s.tokens_per_s,
                    s.requests - 1,
                    s.failures - (not old.ok),
                    min(s.trailing_failures, s.requests - 1),
                    s.last_success,
                )
        return True

    def prune(self, now: float) -> None:
        cut = bisect.bisect_left(self._rows, now - self._horizon, key=lambda s: s.ts)
        if cut:
            for s in self._rows[:cut]:
                self._ids.discard(s.id)
            del self._rows[:cut]
            self._version += 1
            self._dirty = True

    def summary(self, since: float = 0.0) -> Summary:
        if self._dirty or since != self._since:
            self._since, self._dirty = since, False
            summary = Summary()
            for sample in self._rows:
                summary = _fold(summary, sample, since)
            self._summary = summary
        return self._summary

    def quantiles(self) -> Quantiles:
        cached = self._quantiles
        if cached is not None and cached[0] == self._version:
            return cached[1]
        ttfts = sorted(s.ttft_s for s in self._rows if s.ok and s.ttft_s is not None)
        tpss = sorted(s.tokens_per_s for s in self._rows if s.ok and s.tokens_per_s is not None)
        q = Quantiles(_rank(ttfts, 0.5), _rank(ttfts, 0.95), len(ttfts), _rank(tpss, 0.5), _rank(tpss, 0.95))
        self._quantiles = (self._version, q)
        return q


def _fold(s: Summary, sample: Sample, since: float) -> Summary:
    """The summary with one more, newest, sample."""
    ttft, tps, last = s.ttft_s, s.tokens_per_s, s.last_success
    if sample.ok:
        last = sample.ts
        if sample.ttft_s is not None:
            ttft = sample.ttft_s if ttft is None else ttft + ALPHA * (sample.ttft_s - ttft)
        if sample.tokens_per_s is not None:
            tps = sample.tokens_per_s if tps is None else tps + ALPHA * (sample.tokens_per_s - tps)
    if sample.ts < since:
        return Summary(ttft, tps, s.requests, s.failures, s.trailing_failures, last)
    return Summary(
        ttft, tps, s.requests + 1, s.failures + (not sample.ok), 0 if sample.ok else s.trailing_failures + 1, last
    )


def _rank(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    return values[max(0, math.ceil(q * len(values)) - 1)]
