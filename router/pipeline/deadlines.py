"""Request deadlines, all watched by one coarse timer (``providers.ticker``) rather than
``asyncio.timeout``'s timer per request, which cost more than the rest of dispatch put together:
a request may run up to one tick (50 ms) past its deadline."""

from __future__ import annotations

import asyncio
from types import TracebackType

from providers.ticker import Ticker


class Deadline:
    """The deadline of one task, an async context manager. A task cancelled because the deadline
    passed raises ``TimeoutError`` on leaving it, as under ``asyncio.timeout``; a cancellation
    from elsewhere goes on as it came."""

    __slots__ = ("_cancelling", "_task", "_watch", "expired", "when")

    def __init__(self, watch: Deadlines, when: float) -> None:
        self._watch = watch
        self.when = when  # on the loop's clock
        self.expired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        assert task is not None, "a deadline bounds a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._watch.arm(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._watch.disarm(self)
        if (
            self.expired
            and kind is asyncio.CancelledError
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc

    def expire(self) -> None:
        if not self.expired and self._task is not None:
            self.expired = True
            self._task.cancel()


class Deadlines(Ticker):
    """The deadlines of the requests in flight on one event loop."""

    def after(self, seconds: float) -> Deadline:
        return Deadline(self, asyncio.get_running_loop().time() + seconds)
