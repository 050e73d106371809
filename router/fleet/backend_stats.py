"""Live per-backend, per-model measurements and outlier ejection: a local view kept in step with
the Store that every gateway replica shares.

The request path reads only the local view, which is updated at once by local events. A
background task pushes local samples and counters and pulls the other replicas' (every
``sync_s``). Ejections must be agreed at once: the replica that ejects writes the record before
its request answers; the others hear of it by the store's notification, and before planning
re-read the ejection records of the requested model whenever their view of them is older than
``freshness_s`` (one round trip, shared by concurrent requests).

Only failures that are the backend's fault are reported here: a request the backend rejected as
invalid, a client that went away, or an attempt cancelled by hedging or the deadline says
nothing about the backend's health.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from policies.base import Stats
from router.config import EjectionPolicy
from router.fleet.ejection import PROBE_LEASE_S, may_eject, next_ejection, tripped
from router.fleet.stats_entry import HORIZON_S, KEEP, Entry
from router.state.base import Batch, Ejection, Store, StoreUnavailable, store_key
from router.state.samples import Quantiles, Sample, Summary

log = logging.getLogger("fedrouter.stats")

_NO_STATS = Stats()  # frozen: shared by every key never measured
_CLOSE_S = 2.0  # the longest shutdown waits for the background sync to stop


class StatsBook:
    """Backend statistics keyed by (backend, model), read by the router on every request."""

    def __init__(
        self,
        store: Store,
        policy: EjectionPolicy,
        groups: Mapping[str, Sequence[str]],
        *,
        count_window_s: float = 10.0,
        freshness_s: float = 0.005,
        sync_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._policy = policy
        self._groups = {model: tuple(backends) for model, backends in groups.items()}
        self._entries = {store_key(b, m): Entry() for m, bs in self._groups.items() for b in bs}
        self._models_of: dict[str, list[str]] = {}
        for model, backends in self._groups.items():
            for b in backends:
                self._models_of.setdefault(b, []).append(model)
        self._count_window = count_window_s
        self._freshness = freshness_s
        self._sync_s = sync_s
        self._clock = clock
        self._seq = itertools.count()
        self._pending: dict[str, list[Sample]] = {}  # encoded when pushed, off the request path
        self._local: dict[int, dict[str, int]] = {}  # this process's counters per second
        self._unpushed: dict[int, dict[str, int]] = {}
        self._remote: dict[int, dict[str, int]] = {}  # the other replicas' counters per second
        self._idle: set[str] = set()  # keys whose in-flight went to zero since the last push
        self._synced: dict[str, float] = {}  # model -> monotonic time its ejections were last read
        self._reading: dict[str, asyncio.Future[None]] = {}
        self._pulled = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start(self._heard)
        with contextlib.suppress(StoreUnavailable):
            await self._sync_once()
        self._sync_task = asyncio.create_task(self._sync_forever())

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            # Bounded: shutting down must never wait on a sync stuck in the store's client.
            await asyncio.wait({self._sync_task}, timeout=_CLOSE_S)
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        with contextlib.suppress(StoreUnavailable):
            await self._push()
        await self.store.close()

    # -- reads on the request path --------------------------------------------------------------

    async def refresh(self, model: str) -> None:
        """Make the view of this model's ejections at most ``freshness_s`` old."""
        if time.monotonic() - self._synced.get(model, -math.inf) < self._freshness:
            return
        reading = self._reading.get(model)
        if reading is None:
            reading = self._reading[model] = asyncio.ensure_future(self._read_ejections(model))
            reading.add_done_callback(lambda _: self._reading.pop(model, None))
        await asyncio.shield(reading)  # a caller that goes away must not cancel the others' read

    def view(self, backend: str, model: str | None = None) -> Stats:
        if model is None:  # the backend as a whole: measurements of its busiest model
            models = self._models_of.get(backend, ())
            if not models:
                return Stats()
            views = [self.view(backend, m) for m in models]
            busiest = max(range(len(models)), key=lambda i: len(self._entries[store_key(backend, models[i])].window))
            v = views[busiest]
            return Stats(
                v.ttft_s, v.tokens_per_s, v.error_rate, sum(x.inflight for x in views), all(x.ejected for x in views)
            )
        return self.view_key(store_key(backend, model))

    def view_key(self, key: str) -> Stats:
        """``view`` by store key: the planner's read, once per candidate per request."""
        e = self._entries.get(key)
        if e is None:
            return _NO_STATS
        now = self._clock()
        if e.view is not None and now < e.view[1]:
            return e.view[0]
        s = e.window.summary(e.since)
        ejected = e.ejection is not None and now < e.ejection.until
        stats = Stats(s.ttft_s, s.tokens_per_s, s.error_rate, e.inflight + e.others, ejected)
        e.view = (stats, e.ejection.until if ejected and e.ejection else math.inf)
        return stats

    def summary(self, backend: str, model: str) -> Summary:
        e = self._entries.get(store_key(backend, model))
        return e.window.summary(e.since) if e else Summary()

    def quantiles(self, backend: str, model: str) -> Quantiles:
        e = self._entries.get(store_key(backend, model))
        return e.window.quantiles() if e else Quantiles()

    def ejected(self, backend: str, model: str) -> bool:
        e = self._entries.get(store_key(backend, model))
        return e is not None and e.ejection is not None and self._clock() < e.ejection.until

    def half_open(self, backend: str, model: str) -> bool:
        """Its ejection has lapsed but no probe has succeeded yet."""
        e = self._entries.get(store_key(backend, model))
        return e is not None and e.ejection is not None and self._clock() >= e.ejection.until

    # -- events --------------------------------------------------------------------------------

    def started(self, backend: str, model: str) -> None:
        e = self._entry(backend, model)
        e.inflight += 1
        e.attempts += 1
        e.view = None

    def finished(self, backend: str, model: str) -> None:
        e = self._entry(backend, model)
        e.inflight = max(0, e.inflight - 1)
        e.view = None
        if not e.inflight:
            self._idle.add(store_key(backend, model))

    def success(self, backend: str, model: str, ttft_s: float | None, output_tokens: int, generation_s: float) -> None:
        # Throughput needs enough tokens and time to mean anything.
        tps = output_tokens / generation_s if output_tokens >= 4 and generation_s > 1e-4 else None
        self._add(backend, model, True, ttft_s, tps)

    async def failure(self, backend: str, model: str, *, probe: bool = False) -> None:
        """A failure that is the backend's fault; ejects it when the policy says so (and the
        ejection is recorded in the store before this returns)."""
        e = self._add(backend, model, False, None, None)
        e.failures += 1
        trips = tripped(self._policy, e.window.summary(e.since), probe=probe)
        if trips and not self.ejected(backend, model) and self._may_eject(backend, model):
            await self._eject(backend, model, e)
        if probe:
            e.probing = False
            await self._guard(self.store.release_probe(store_key(backend, model)))

    def answered(self, backend: str, model: str, *, probe: bool) -> None:
        """The backend answered; if that was its probe, it is back in rotation everywhere."""
        if not probe:
            return
        e = self._entry(backend, model)
        e.ejection, e.probing, e.changed, e.view = None, False, time.monotonic(), None
        key = store_key(backend, model)
        self._background(self._restore(key))

    def released(self, backend: str, model: str, *, probe: bool) -> None:
        """The attempt ended with no verdict on the backend (cancelled, or the request's own fault)."""
        if probe:
            self._entry(backend, model).probing = False
            self._background(self._guard(self.store.release_probe(store_key(backend, model))))

    async def claim_probe(self, backend: str, model: str) -> bool:
        """Take the one probe of a half-open backend; concurrent requests (here or on any replica)
        get False and go elsewhere."""
        e = self._entry(backend, model)
        if e.probing:
            return False
        e.probing = True
        try:
            won = await self.store.claim_probe(store_key(backend, model), PROBE_LEASE_S)
        except StoreUnavailable:
            won = True  # without the store, this process decides alone
        e.probing = won
        return won

    # -- counters (retry and hedge budgets) ----------------------------------------------------

    def count(self, name: str) -> None:
        bucket = int(self._clock())
        for table in (self._local, self._unpushed):
            counters = table.setdefault(bucket, {})
            counters[name] = counters.get(name, 0) + 1

    def windowed(self, name: str) -> int:
        """Events of this name over the counter window, on every replica."""
        oldest = int(self._clock() - self._count_window)
        return sum(c.get(name, 0) for t in (self._local, self._remote) for b, c in t.items() if b > oldest)

    # -- admin -------------------------------------------------------------------------------

    def snapshot(self, backend: str) -> dict[str, Any]:
        """The backend as a whole (single-model figures when it serves one model) and per model."""
        now = self._clock()
        models = {m: self._entries[store_key(backend, m)].snapshot(now) for m in self._models_of.get(backend, ())}
        rows = list(models.values())
        one = rows[0] if len(rows) == 1 else {}
        return {
            "ttft_s": one.get("ttft_s"),
            "tokens_per_s": one.get("tokens_per_s"),
            "inflight": sum(r["inflight"] for r in rows),
            "requests": sum(r["requests"] for r in rows),
            "failures": sum(r["failures"] for r in rows),
            "error_rate": max((r["error_rate"] for r in rows), default=0.0),
            "ejected": bool(rows) and all(r["ejected"] for r in rows),
            "ejected_for_s": max((r["ejected_for_s"] for r in rows), default=0.0),
            "models": models,
        }

    # -- internals ---------------------------------------------------------------------------

    def _entry(self, backend: str, model: str) -> Entry:
        key = store_key(backend, model)
        e = self._entries.get(key)
        if e is None:  # a backend outside the configured groups (never in practice)
            e = self._entries[key] = Entry()
        return e

    def _add(self, backend: str, model: str, ok: bool, ttft: float | None, tps: float | None) -> Entry:
        e = self._entry(backend, model)
        sample = Sample(self._clock(), ok, ttft, tps, f"{self.store.replica}:{next(self._seq)}")
        e.window.add(sample)
        e.view = None
        self._pending.setdefault(store_key(backend, model), []).append(sample)
        return e

    def _may_eject(self, backend: str, model: str) -> bool:
        group = self._groups.get(model, (backend,))
        return may_eject(self._policy, len(group), sum(1 for b in group if b != backend and self.ejected(b, model)))

    async def _eject(self, backend: str, model: str, e: Entry) -> None:
        ejection, keep_s = next_ejection(self._policy, e.ejection, self._clock())
        self._set(e, ejection)
        log.warning("ejected %s for %s (%d in a row) until %.3f", backend, model, ejection.count, ejection.until)
        await self._guard(self.store.eject(store_key(backend, model), ejection, keep_s))

    def _set(self, e: Entry, ejection: Ejection | None, seen: float | None = None) -> None:
        if seen is not None and e.changed > seen:
            return  # a local change newer than what was read
        if ejection == e.ejection:
            return
        if seen is None:
            e.changed = time.monotonic()
        e.ejection, e.view = ejection, None
        if ejection is not None:
            e.since = max(e.since, ejection.until)

    def _heard(self, key: str, ejection: Ejection | None) -> None:
        """A store notification: some replica changed a key's ejection."""
        e = self._entries.get(key)
        if e is not None:
            self._set(e, ejection, time.monotonic())

    async def _read_ejections(self, model: str) -> None:
        started = time.monotonic()
        keys = [store_key(b, model) for b in self._groups.get(model, ())]
        try:
            found = await self.store.ejections(keys)
        except StoreUnavailable as exc:
            log.warning("state store unavailable (%s); using the local view for 1 s", exc)
            self._synced[model] = started + 1.0
            return
        for key in keys:
            self._set(self._entries[key], found.get(key), started)
        self._synced[model] = started

    async def _restore(self, key: str) -> None:
        await self._guard(self.store.restore(key))
        await self._guard(self.store.release_probe(key))

    async def _guard(self, op: Coroutine[Any, Any, object]) -> None:
        try:
            await op
        except StoreUnavailable as exc:
            log.warning("state store unavailable: %s", exc)

    def _background(self, op: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(op)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sync with the other replicas ------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sync_s)
            try:
                await self._sync_once()
            except StoreUnavailable as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py can turn the cancellation of a command in flight into a connection
                    # error: swallowed here, it kept a worker from ever shutting down.
                    raise asyncio.CancelledError from exc
                log.warning("state sync failed: %s", exc)

    async def _push(self) -> None:
        samples = {key: [(s.ts, s.encode()) for s in pending] for key, pending in self._pending.items()}
        batch = Batch(
            samples, self._unpushed, {k: e.inflight for k, e in self._entries.items() if e.inflight or k in self._idle}
        )
        self._pending, self._unpushed, self._idle = {}, {}, set()
        if batch:
            await self.store.push(batch, keep=KEEP, ttl_s=max(HORIZON_S, self._count_window + 1))

    async def _sync_once(self) -> None:
        await self._push()
        now = self._clock()
        keys = list(self._entries)
        started = time.monotonic()
        buckets = list(range(int(now - self._count_window) + 1, int(now) + 1))
        # A sample lands up to one sync after its timestamp: re-read a margin, deduplicated by id.
        snap = await self.store.pull(keys, self._pulled - 1.0, buckets, ttl_s=self._sync_s * 8 + 1)
        ejections = await self.store.ejections(keys)
        self._pulled = now
        mine = f"{self.store.replica}:".encode()
        for key, e in self._entries.items():
            for raw in snap.samples.get(key, ()):
                if raw[raw.rfind(b" ") + 1 :].startswith(mine):
                    continue  # this replica's own: in the window since it was taken (and many per sync)
                sample = Sample.decode(raw)
                if sample is not None and e.window.add(sample):
                    e.view = None
            e.window.prune(now)
            if e.others != snap.inflight.get(key, 0):
                e.others, e.view = snap.inflight.get(key, 0), None
            self._set(e, ejections.get(key), started)
        self._remote = snap.counts
        oldest = int(now - self._count_window)
        self._local = {b: c for b, c in self._local.items() if b > oldest}
