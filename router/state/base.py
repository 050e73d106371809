"""The Store protocol: backend state shared by every gateway replica (samples, counters, ejections).

A store holds only what replicas must agree on. Each replica keeps its own local view
(``router.fleet.backend_stats``) and talks to the store in batches, so the request path never waits
on the store except for the few reads that must be fresh (ejections) and the rare writes that
others must see before the client does (an ejection).

Keys name one backend serving one model: ``"backend/model"`` (a backend name has no ``/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error; callers fall back to their
    local view rather than failing the request."""


@dataclass(frozen=True, slots=True)
class Ejection:
    """A key taken out of rotation until ``until`` (unix seconds). ``count`` is how many times in
    a row it was ejected; the record outlives ``until`` so that the next ejection lasts longer."""

    until: float
    count: int


@dataclass(slots=True)
class Batch:
    """What one replica has to tell the others since its last push."""

    #: key -> new samples (``router.state.samples`` encoding), each with an id unique across replicas.
    samples: dict[str, list[tuple[float, bytes]]] = field(default_factory=dict)
    #: bucket (unix second) -> counter name -> increment.
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    #: key -> this replica's in-flight requests: every non-zero one on each push (a heartbeat), and a
    #: zero once for a key that went idle.
    inflight: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.samples or self.counts or self.inflight)


@dataclass(slots=True)
class Snapshot:
    """What the other replicas said; a replica's own writes are excluded where they would be
    counted twice (counters, in-flight) and included where they are deduplicated by id (samples)."""

    samples: dict[str, list[bytes]] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)


#: Called with a key and its new ejection (None: restored) when any replica changes it.
Listener = Callable[[str, "Ejection | None"], None]


class Store(Protocol):
    """Shared backend state. Every method raises StoreUnavailable when the store cannot answer."""

    #: This replica's id, unique among the replicas sharing the store.
    replica: str

    async def start(self, listener: Listener) -> None:
        """Connect, and call ``listener`` on every ejection change made by any replica
        (including this one), as soon as it is known. Delivery is best effort: readers that must
        be current also call ``ejections``."""
        ...

    async def close(self) -> None: ...

    async def push(self, batch: Batch, *, keep: int, ttl_s: float) -> None:
        """Add samples (keeping the newest ``keep`` per key), add to counters, set this replica's
        in-flight; everything expires ``ttl_s`` after its last write. One round trip."""
        ...

    async def pull(self, keys: Sequence[str], since: float, buckets: Sequence[int], *, ttl_s: float) -> Snapshot:
        """Samples newer than ``since`` (unix seconds) for ``keys``, the other replicas' counters
        in ``buckets`` and their in-flight per key (as last pushed, within ``ttl_s``). One round trip."""
        ...

    async def ejections(self, keys: Sequence[str]) -> dict[str, Ejection]:
        """The current ejection record of each key that has one. One round trip."""
        ...

    async def eject(self, key: str, ejection: Ejection, ttl_s: float) -> None:
        """Record an ejection (kept ``ttl_s``) and notify every replica; durable when this returns."""
        ...

    async def restore(self, key: str) -> None:
        """Forget a key's ejection record (its probe succeeded) and notify every replica."""
        ...

    async def claim_probe(self, key: str, ttl_s: float) -> bool:
        """Take the one probe of a key whose ejection has lapsed; False if another request holds it.
        The claim lapses after ``ttl_s`` if never released."""
        ...

    async def release_probe(self, key: str) -> None: ...


def store_key(backend: str, model: str) -> str:
    return f"{backend}/{model}"


def split_key(key: str) -> tuple[str, str]:
    backend, _, model = key.partition("/")
    return backend, model


__all__ = ["Batch", "Ejection", "Listener", "Snapshot", "Store", "StoreUnavailable", "split_key", "store_key"]
