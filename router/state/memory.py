"""The in-process Store: the default for a single gateway process, and the reference semantics
the Redis store must match (both pass tests/test_state_contract.py)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from router.state.base import Batch, Ejection, Listener, Snapshot

V = TypeVar("V")


@dataclass(slots=True)
class MemorySpace:
    """The state itself. Several MemoryStore replicas may share one space, as Redis clients share
    one server; each key maps to (value, expiry in unix seconds)."""

    clock: Callable[[], float] = time.time
    samples: dict[str, tuple[list[tuple[float, bytes]], float]] = field(default_factory=dict)
    counts: dict[int, tuple[dict[str, int], float]] = field(default_factory=dict)  # field: replica|name
    inflight: dict[str, tuple[int, float]] = field(default_factory=dict)  # replica|key -> (n, pushed at)
    ejections: dict[str, tuple[Ejection, float]] = field(default_factory=dict)
    probes: dict[str, tuple[str, float]] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)

    def live(self, table: dict[str, tuple[V, float]], key: str) -> V | None:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del table[key]
            return None
        return entry[0]

    def notify(self, key: str, ejection: Ejection | None) -> None:
        for listener in self.listeners:
            listener(key, ejection)


class MemoryStore:
    def __init__(self, replica: str = "local", space: MemorySpace | None = None) -> None:
        self.replica = replica
        self.space = space or MemorySpace()
        self._listener: Listener | None = None

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self.space.listeners.append(listener)

    async def close(self) -> None:
        if self._listener is not None and self._listener in self.space.listeners:
            self.space.listeners.remove(self._listener)

    async def push(self, batch: Batch, *, keep: int, ttl_s: float) -> None:
        s = self.space
        now = s.clock()
        for key, new in batch.samples.items():
            rows = s.live(s.samples, key) or []
            rows = sorted(set(rows).union(new))  # a member is unique, as in a sorted set
            s.samples[key] = (rows[-keep:], now + ttl_s)
        for bucket, counters in batch.counts.items():
            entry = s.counts.get(bucket)
            fields = entry[0] if entry and entry[1] > now else {}
            for name, n in counters.items():
                f = f"{self.replica}|{name}"
                fields[f] = fields.get(f, 0) + n
            s.counts[bucket] = (fields, now + ttl_s)
        for key, n in batch.inflight.items():
            f = f"{self.replica}|{key}"
            if n:
                s.inflight[f] = (n, now)
            else:
                s.inflight.pop(f, None)

    async def pull(self, keys: Sequence[str], since: float, buckets: Sequence[int], *, ttl_s: float) -> Snapshot:
        s = self.space
        now = s.clock()
        out = Snapshot()
        for key in keys:
            rows = s.live(s.samples, key) or []
            start = bisect.bisect_right(rows, (since, b"\xff"))
            if start < len(rows):
                out.samples[key] = [raw for _, raw in rows[start:]]
        mine = self.replica + "|"
        for bucket in buckets:
            entry = s.counts.get(bucket)
            if entry is None or entry[1] <= now:
                continue
            for f, n in entry[0].items():
                if not f.startswith(mine):
                    name = f.partition("|")[2]
                    out.counts.setdefault(bucket, {})[name] = out.counts.get(bucket, {}).get(name, 0) + n
        for f, (n, pushed) in s.inflight.items():
            if not f.startswith(mine) and pushed > now - ttl_s:
                key = f.partition("|")[2]
                out.inflight[key] = out.inflight.get(key, 0) + n
        return out

    async def ejections(self, keys: Sequence[str]) -> dict[str, Ejection]:
        s = self.space
        return {k: e for k in keys if (e := s.live(s.ejections, k)) is not None}

    async def eject(self, key: str, ejection: Ejection, ttl_s: float) -> None:
        self.space.ejections[key] = (ejection, self.space.clock() + ttl_s)
        self.space.notify(key, ejection)

    async def restore(self, key: str) -> None:
        self.space.ejections.pop(key, None)
        self.space.notify(key, None)

    async def claim_probe(self, key: str, ttl_s: float) -> bool:
        s = self.space
        if s.live(s.probes, key) is not None:
            return False
        s.probes[key] = (self.replica, s.clock() + ttl_s)
        return True

    async def release_probe(self, key: str) -> None:
        s = self.space
        if s.live(s.probes, key) == self.replica:
            del s.probes[key]
