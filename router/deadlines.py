"""Request deadlines, all watched by one coarse timer rather than a timer each.

``asyncio.timeout`` arms a timer per request and disarms it on the way out; on uvloop each is a
libuv timer started and stopped, which cost more than the rest of dispatch put together. A
deadline here is an entry in a dict that one timer, ticking only while some are armed, checks
every ``tick_s``: a request runs at most that much past its deadline, a few per cent of any
deadline worth setting.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


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

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._watch.disarm(self)
        if self.expired and kind is asyncio.CancelledError and self._task is not None \
                and self._task.uncancel() <= self._cancelling:
            raise TimeoutError from exc

    def expire(self) -> None:
        if not self.expired and self._task is not None:
            self.expired = True
            self._task.cancel()


class Deadlines:
    """The deadlines of the requests in flight on one event loop."""

    def __init__(self, tick_s: float = 0.05) -> None:
        self.tick_s = tick_s
        self._armed: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def after(self, seconds: float) -> Deadline:
        return Deadline(self, asyncio.get_running_loop().time() + seconds)

    def arm(self, deadline: Deadline) -> None:
        self._armed.add(deadline)
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # none ticking, or on a loop since closed
            self._loop = loop
            self._timer = loop.call_later(self.tick_s, self._check)

    def disarm(self, deadline: Deadline) -> None:
        self._armed.discard(deadline)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for deadline in [d for d in self._armed if d.when <= now]:
            self._armed.discard(deadline)
            deadline.expire()
        # Ticks only while some deadline is armed: an idle gateway has no timer running.
        self._timer = loop.call_later(self.tick_s, self._check) if self._armed else None
