"""``router.pipeline.hedging.race`` on its own: which attempt wins, and which loser counts as consumed."""

from __future__ import annotations

import asyncio

import pytest

from providers.base import ProviderError
from router.pipeline.hedging import Superseded, race


def _yes() -> bool:
    return True


@pytest.mark.asyncio
async def test_the_hedge_that_answers_first_wins_and_the_first_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "slow"

    async def fast() -> str:
        return "fast"

    raced = await race(slow, fast, 0.01, _yes, None)
    assert (raced.winner, raced.value, raced.hedged, raced.cancelled) == (1, "fast", True, 0)
    assert cancelled.is_set()


@pytest.mark.asyncio
async def test_an_attempt_superseded_after_answering_counts_as_consumed() -> None:
    answered = asyncio.Event()

    async def first() -> str:
        await asyncio.sleep(0.03)
        answered.set()
        return "first"

    async def second() -> str:  # has its answer too, just after the other committed to the client
        await answered.wait()
        raise Superseded

    raced = await race(first, second, 0.01, _yes, None)
    assert (raced.winner, raced.value, raced.cancelled) == (0, "first", 1)


@pytest.mark.asyncio
async def test_an_attempt_that_failed_on_its_own_is_not_counted_as_consumed() -> None:
    async def first() -> str:
        await asyncio.sleep(0.05)
        return "first"

    async def second() -> str:
        raise ProviderError("connect", "refused")

    raced = await race(first, second, 0.01, _yes, None)
    assert (raced.winner, raced.cancelled) == (0, None)


@pytest.mark.asyncio
async def test_when_both_fail_the_last_error_is_raised() -> None:
    async def first() -> str:
        await asyncio.sleep(0.03)
        raise ProviderError("status", "second failure", status=503)

    async def second() -> str:
        raise ProviderError("connect", "first failure")

    with pytest.raises(ProviderError, match="second failure"):
        await race(first, second, 0.01, _yes, None)
