"""Request deadlines watched by one coarse timer: they fire, and they tell their own
cancellation from anyone else's, as asyncio.timeout does."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.pipeline.deadlines import Deadlines

async_test = pytest.mark.asyncio


@async_test
async def test_a_passed_deadline_raises_timeout_error_within_a_tick():
    watch = Deadlines(tick_s=0.02)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with watch.after(0.1):
            await asyncio.sleep(5)
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 0.1 + 0.02 + 0.1  # a tick late at most, with room for a busy machine


@async_test
async def test_work_done_in_time_is_untouched_and_the_timer_stops():
    watch = Deadlines(tick_s=0.01)
    async with watch.after(0.5) as deadline:
        await asyncio.sleep(0.03)
    assert not deadline.expired
    await asyncio.sleep(0.03)  # a tick after the last deadline was disarmed
    assert not watch.ticking, "an idle gateway keeps no timer running"


@async_test
async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    watch = Deadlines(tick_s=0.01)
    entered = asyncio.Event()

    async def bounded() -> None:
        async with watch.after(10):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(bounded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@async_test
async def test_a_cancellation_from_elsewhere_after_expiry_is_not_swallowed():
    watch = Deadlines(tick_s=0.01)
    seen: list[str] = []

    async def bounded() -> None:
        try:
            async with watch.after(0.02):
                try:
                    await asyncio.sleep(5)
                finally:
                    # The deadline's cancel landed; another one (the client left) lands too.
                    asyncio.current_task().cancel()  # type: ignore[union-attr]
                    await asyncio.sleep(0)
        except TimeoutError:
            seen.append("timeout")

    task = asyncio.create_task(bounded())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == []


@async_test
async def test_deadlines_of_concurrent_tasks_fire_each_on_time():
    watch = Deadlines(tick_s=0.01)

    async def bounded(seconds: float) -> str:
        try:
            async with watch.after(seconds):
                await asyncio.sleep(0.15)
                return "done"
        except TimeoutError:
            return "timeout"

    assert await asyncio.gather(bounded(0.05), bounded(1.0), bounded(0.05)) == ["timeout", "done", "timeout"]


def test_one_watch_serves_successive_event_loops():
    watch = Deadlines(tick_s=0.01)

    async def quick() -> None:
        async with watch.after(5):
            pass  # disarmed at once: the loop closes with the tick still scheduled on it

    async def slow() -> bool:
        try:
            async with watch.after(0.03):
                await asyncio.sleep(1)
        except TimeoutError:
            return True
        return False

    asyncio.run(quick())
    assert watch.ticking
    assert asyncio.run(slow()), "the second loop got a timer of its own"
