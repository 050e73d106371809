"""Relaying a pipeline ``StreamAnswer`` to a client, for both servers: the pump that stops when
the client leaves, stops reading (``limits.write_stall_s``), or outlasts the backend's
``timeouts.total``, and its ASGI form.

Whatever ends the relay, the stream's events are closed and its ``abandon`` runs, so the backend's
slot, the connection and the budget reservation go back, and the tokens generated so far are
billed as for a client that disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from providers.flow_control import WriteStalled
from router.pipeline.answer import StreamAnswer

log = logging.getLogger("fedrouter")


async def pump(stream: StreamAnswer, write: Callable[[bytes], Awaitable[None]], gone: asyncio.Future[Any]) -> bool:
    """Write ``stream``'s events through ``write`` in this task; ``gone`` resolves when the client
    leaves, which cancels the task (and with it the upstream call). The clean-up always runs.
    True if every event was written; False if the client left, stopped reading (``write`` raised
    ``WriteStalled``), or the stream outlasted its deadline."""
    # A callback on ``gone`` rather than a watcher task beside the relay: the first byte
    # would pay for starting it.
    task = asyncio.current_task()
    assert task is not None
    left, pumping = False, True

    def client_left(watch: asyncio.Future[Any]) -> None:
        nonlocal left
        if pumping and not watch.cancelled() and watch.exception() is None:
            left = True
            task.cancel()

    gone.add_done_callback(client_left)
    try:
        async with asyncio.timeout(max(0.0, stream.deadline - time.perf_counter())):
            async for chunk in stream.events:
                await write(chunk)
        return True
    except (OSError, WriteStalled):
        return False  # the client went away (ASGI 2.4 servers raise on send), or stopped reading
    except TimeoutError:
        log.warning("a stream outlasted its backend's timeouts.total; ended")
        return False
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()  # our own cancellation, for a client that is gone: nothing to report
        return False
    finally:
        pumping = False  # a disconnect noticed from here on must not cancel the clean-up
        gone.remove_done_callback(client_left)
        await stream.close()


class EventStreamResponse:
    """A ``StreamAnswer`` as an ASGI app: notices a client leaving even while the upstream is
    silent (it watches ``receive``), and then cancels the relay (and with it the upstream call)."""

    def __init__(self, stream: StreamAnswer, write_stall_s: float | None = None) -> None:
        self.stream = stream
        self.write_stall_s = write_stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = asyncio.ensure_future(wait_disconnect(receive))
        stall = self.write_stall_s

        async def body(chunk: bytes) -> None:
            # The server's send waits while the client reads nothing (uvicorn's, for as long as
            # it takes): the same write deadline as on fedrouter's own server.
            try:
                async with asyncio.timeout(stall):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                raise WriteStalled(f"the client read nothing for {stall:g} s") from None

        try:
            try:
                await send({"type": "http.response.start", "status": 200, "headers": self.stream.headers})
            except OSError:
                await self.stream.close()  # gone before the head
                return
            if await pump(self.stream, body, watch):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.cancel()


async def wait_disconnect(receive: Receive) -> None:
    """Returns once the client has left (every other message is dropped: the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
