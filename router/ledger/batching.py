"""The queue both ledger writers share: group commit's front half, written once.

``submit`` and ``enqueue`` put a record (with the future a waiting response holds, or none) on the
writer's queue; the writer takes the first record and every one queued behind it as one batch.
SQLite's writer is a thread (a ``queue.SimpleQueue``) and PostgreSQL's an asyncio task (an
``asyncio.Queue``); both queues offer ``put_nowait``, ``get_nowait`` and ``qsize``, so the rules
(retention, the stop marker, the batch cap) live here and each writer keeps only its commit.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from router.ledger.base import Retention, UsageRecord, done_future

Item = tuple[UsageRecord, asyncio.Future[None] | None]  # no future: nobody waits for the commit
STOP = None  # queued by close(): the writer ends after the batch it is in


class WriteQueue(Protocol):
    def put_nowait(self, item: Item | None, /) -> None: ...

    def get_nowait(self) -> Item | None: ...

    def qsize(self) -> int: ...


class BatchingWriter:
    """Base of the ledger writers: ``submit``, ``enqueue`` and ``pending`` of the Ledger protocol,
    and ``_gather``, which the writer calls with each record it wakes up for."""

    def __init__(self, queue: WriteQueue, empty: type[Exception], max_batch: int, retention_days: int | None) -> None:
        self._queue = queue
        self._empty = empty  # what the queue's get_nowait raises when there is nothing to take
        self._max_batch = max_batch
        self._retention = Retention(retention_days)

    def submit(self, record: UsageRecord) -> asyncio.Future[None]:
        if self._retention.too_old(record):
            return done_future()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, fut))
        return fut

    def enqueue(self, record: UsageRecord) -> None:
        if not self._retention.too_old(record):
            self._queue.put_nowait((record, None))

    def pending(self) -> int:
        return self._queue.qsize()

    def _gather(self, first: Item) -> tuple[list[Item], bool]:
        """``first`` and the records queued behind it, up to the batch cap; True if the stop
        marker came among them (the writer commits this batch, then ends)."""
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except self._empty:
                break
            if nxt is STOP:
                return batch, True
            batch.append(nxt)
        return batch, False
