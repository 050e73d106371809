"""What the pipeline answers with: plain values that the HTTP edge (``router.http``) turns into
bytes on the wire or into ASGI messages, so that the pipeline knows nothing of any web framework."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Answer:
    """A whole answer; the edge adds the framing headers (content-length, date, request id)."""

    status: int
    headers: Headers
    body: bytes


@dataclass(slots=True)
class StreamAnswer:
    """An event stream: status 200, ``headers``, then ``events``, each one framed already.

    ``abandon`` ends a stream whose events were never read (its backend slot and budget
    reservation go back; a no-op once the events have started). ``deadline`` is the
    ``time.perf_counter()`` by which the relay must have ended: the answering backend's
    ``timeouts.total`` (and a short grace, so that the backend's own deadline, which ends the
    stream with an error event, comes first), which must bound a client that does not read as
    well as a slow backend.
    """

    headers: Headers
    events: AsyncGenerator[bytes, None]
    abandon: Callable[[], Awaitable[None]]
    deadline: float

    async def close(self) -> None:
        """End the events and give back what they held: after the relay, or instead of it."""
        await self.events.aclose()
        await self.abandon()
