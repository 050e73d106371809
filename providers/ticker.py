"""Timeouts on one event loop, all checked by one coarse timer rather than a timer each.

On uvloop every ``call_later`` starts a libuv timer and its cancel stops it: per request and
per read that cost more than the work they guard. Here a timeout is an entry in a set that one
timer, ticking every ``tick_s`` only while some entry is armed, checks: a timeout fires at most
that much late, a few per cent of any timeout worth setting.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Expiring(Protocol):
    when: float  # on the loop's clock

    def expire(self) -> None: ...


class Ticker:
    def __init__(self, tick_s: float = 0.05) -> None:
        self.tick_s = tick_s
        self._armed: set[Expiring] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def arm(self, item: Expiring) -> None:
        """``item.expire()`` is called once ``item.when`` has passed, unless disarmed before."""
        self._armed.add(item)
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # none ticking, or on a loop since closed
            self._loop = loop
            self._timer = loop.call_later(self.tick_s, self._check)

    def disarm(self, item: Expiring) -> None:
        self._armed.discard(item)

    @property
    def ticking(self) -> bool:
        return self._timer is not None

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for item in [i for i in self._armed if i.when <= now]:
            self._armed.discard(item)
            item.expire()
        # Ticks only while something is armed: an idle gateway keeps no timer running.
        self._timer = loop.call_later(self.tick_s, self._check) if self._armed else None
