"""Hedged attempts: when the first backend has not answered by its usual time, ask the next one
too, keep whichever answers first and cancel the other at once.

Hedging trades a little extra load for a shorter tail: with the delay at the backend's p95 time
to first token, about one request in twenty would hedge; ``max_share`` caps that over the budget
window, on every replica together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from providers.base import ProviderError
from router.config import HedgingConfig
from router.fleet.backend_stats import StatsBook

T = TypeVar("T")

GRACE_S = 0.1  # the losing attempt is cancelled and its connection closed within this
MIN_SAMPLES = 20  # a p95 over fewer time-to-first-token samples means little: no hedging on it


class Hedger:
    def __init__(self, config: HedgingConfig, stats: StatsBook) -> None:
        self._config = config
        self._tenants = None if config.tenants is None else frozenset(config.tenants)
        self._stats = stats

    def applies(self, tenant: str) -> bool:
        return self._config.enabled and (self._tenants is None or tenant in self._tenants)

    def delay(self, backend: str, model: str, stream: bool, max_output_tokens: int) -> float | None:
        """How long to wait for ``backend`` before hedging; None: not measured enough to tell."""
        if not isinstance(self._config.delay, str):
            return self._config.delay
        q = self._stats.quantiles(backend, model)
        if q.ttft_samples < MIN_SAMPLES or q.ttft_p95 is None:
            return None
        if stream:
            return q.ttft_p95
        # A non-streamed answer arrives whole: add its generation time at the median throughput.
        tps = q.tokens_per_s_p50
        return q.ttft_p95 + (max_output_tokens / tps if tps else 0.0)

    def take(self) -> bool:
        """Whether one more hedge stays within ``max_share`` of requests; counts it if so."""
        if self._stats.windowed("hedges") + 1 > self._config.max_share * self._stats.windowed("requests"):
            return False
        self._stats.count("hedges")
        return True


class Superseded(Exception):
    """Raised by an attempt that has its answer but finds the other already answered the client;
    it consumed as much as a hedge cancelled in flight."""


@dataclass(frozen=True, slots=True)
class Raced(Generic[T]):
    winner: int  # 0: the first attempt, 1: the hedge
    value: T
    hedged: bool
    cancelled: int | None  # the attempt cancelled after the other answered, if any


async def race(
    first: Callable[[], Awaitable[T]],
    second: Callable[[], Awaitable[T]],
    delay: float,
    may_hedge: Callable[[], bool],
    discard: Callable[[T], Awaitable[None]] | None,
) -> Raced[T]:
    """Run ``first``; if it is still running after ``delay`` and ``may_hedge()``, run ``second``
    too. The first to succeed wins; the other is cancelled (or, had it succeeded as well, its
    result discarded). Fails with the last error when both fail, at once on a client error."""
    tasks: list[asyncio.Future[T]] = [asyncio.ensure_future(first())]
    try:
        done, _ = await asyncio.wait(tasks, timeout=delay)
        if done or not may_hedge():
            return Raced(0, await tasks[0], False, None)
        tasks.append(asyncio.ensure_future(second()))
        pending: set[asyncio.Future[T]] = set(tasks)
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for i, task in enumerate(tasks):
                if task in done and _succeeded(task):
                    other = tasks[1 - i]
                    consumed = await _stop(other, discard)
                    return Raced(i, task.result(), True, 1 - i if consumed else None)
            for task in done:
                error = task.exception() if not task.cancelled() else asyncio.CancelledError()
                if isinstance(error, ProviderError) and not error.retryable:
                    raise error  # the request itself is at fault: the other will not do better
        assert error is not None
        raise error
    finally:
        running = [task for task in tasks if not task.done()]
        for task in running:
            task.cancel()
            task.add_done_callback(_retrieve)
        if running:
            await asyncio.wait(running, timeout=GRACE_S)


def _succeeded(task: asyncio.Future[T]) -> bool:
    return not task.cancelled() and task.exception() is None


def _retrieve(task: asyncio.Future[T]) -> None:
    if not task.cancelled():
        task.exception()  # seen: an attempt that fails after losing is not an unhandled error


async def _stop(task: asyncio.Future[T], discard: Callable[[T], Awaitable[None]] | None) -> bool:
    """Stop the losing attempt; True if it had consumed anything (it was running or succeeded)."""
    if not task.done():
        task.cancel()
        task.add_done_callback(_retrieve)
        await asyncio.wait({task}, timeout=GRACE_S)
        return True
    if not _succeeded(task):
        # It failed on its own, and was accounted as a failure; or it came second with an answer.
        return not task.cancelled() and isinstance(task.exception(), Superseded)
    if discard is not None:
        with contextlib.suppress(Exception):
            await discard(task.result())
    return True
