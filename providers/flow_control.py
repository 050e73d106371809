"""Back-pressure for a transport's writes, shared by the gateway's server and its upstream client.

asyncio calls ``pause_writing`` when a transport's buffer passes its high-water mark and
``resume_writing`` when it drains. A writer that awaits ``drain`` after writing therefore never
lets a slow reader make the gateway buffer without bound. ``drain`` takes a deadline because the
reader may be a stranger that stops reading on purpose: waiting for ever would pin whatever the
writer holds (a stream slot, a budget reservation, a backend connection).
"""

from __future__ import annotations

import asyncio


class WriteStalled(TimeoutError):
    """The peer read nothing for longer than the write deadline allows (a timeout, as callers treat it)."""


class FlowControl:
    """Whether writing is paused, and a future that completes when it may go on (or the peer left)."""

    __slots__ = ("_drained", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._drained: asyncio.Future[None] | None = None

    @property
    def paused(self) -> bool:
        return self._drained is not None

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        self._release()

    def connection_lost(self) -> None:
        """Writers waiting for a drain wake up; their next write sees the connection gone."""
        self._release()

    def _release(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self, within: float | None = None) -> None:
        """Return once writing may go on; raise ``WriteStalled`` if that takes over ``within`` s."""
        drained = self._drained
        if drained is None:
            return
        if within is None:
            await asyncio.shield(drained)
            return
        try:
            await asyncio.wait_for(asyncio.shield(drained), within)
        except TimeoutError:
            raise WriteStalled(f"the peer read nothing for {within:g} s") from None
