"""A chat stream's events, as the relay gives them, turned into the Responses API's events.

The order is the documented one: ``response.created`` and ``response.in_progress``; for each
output item ``response.output_item.added``, then for text ``response.content_part.added`` and
``response.output_text.delta``s, or for a function call ``response.function_call_arguments.delta``s;
the ``...done`` events as each item closes; then ``response.completed`` (``response.incomplete``
when the output cap stopped it) with the usage billed. A failure after the first event (the relay's
one error event, or a fault of ours) ends the stream with one ``response.failed``.

Routing, fallback and billing happen before and beneath this: it only rewrites events, so the
chat relay's guarantees (the usage record durable before the end is sent) hold unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson

from router.pipeline.responses_output import Echo, call_item, message_item, text_part, usage
from router.pipeline.streaming import DONE

log = logging.getLogger("fedrouter")


@dataclass(slots=True)
class _Item:
    """An output item being streamed: a message's text, or a function call's arguments."""

    index: int
    id: str
    kind: str  # "message" | "function_call"
    text: list[str]
    call_id: str = ""
    name: str = ""


class ResponseEvents:
    """The translation of one stream; ``feed`` takes each relayed chat frame, in order."""

    __slots__ = ("_calls", "_cut", "_echo", "_ended", "_items", "_open", "_seq", "_started", "_usage")

    def __init__(self, echo: Echo) -> None:
        self._echo = echo
        self._seq = 0
        self._started = False
        self._ended = False
        self._items: list[dict[str, Any]] = []  # the output items closed, in order
        self._open: _Item | None = None  # the text item being written
        self._calls: dict[int, _Item] = {}  # open function calls, by their chat index
        self._usage: dict[str, Any] | None = None
        self._cut = False

    async def relay(self, frames: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """``frames`` translated; a fault of ours ends the stream with one ``response.failed``."""
        try:
            async for frame in frames:
                out = self.feed(frame)
                if out:
                    yield out
            if not self._ended:  # the chat stream ended without its end: not a whole answer
                yield self.feed(b"") + self._failed("The stream ended before the response was complete.")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error relaying a Responses stream")
            if not self._ended:  # the stream has begun (its head is out): it still ends as one
                yield self.feed(b"") + self._failed("The server had an error while processing your request.")
        finally:
            await frames.aclose()

    def feed(self, frame: bytes) -> bytes:
        """The Responses events that ``frame`` (one framed chat event, or none) stands for."""
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._event("response.created", response=self._echo.response("in_progress", [])))
            out.append(self._event("response.in_progress", response=self._echo.response("in_progress", [])))
        if not frame or self._ended:
            return b"".join(out)
        if frame == DONE:
            out.extend(self._complete())
            return b"".join(out)
        chunk = orjson.loads(frame.removeprefix(b"data: ").rstrip(b"\n"))
        if "error" in chunk:
            err = chunk["error"]
            out.append(self._failed(str(err.get("message") if isinstance(err, dict) else err)))
            return b"".join(out)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:  # a Response has one answer: the first choice's
                out.extend(self._choice(choice))
        return b"".join(out)

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            out.extend(self._text(text))
        for call in delta.get("tool_calls") or []:
            out.extend(self._call(call))
        if choice.get("finish_reason"):
            self._cut = choice["finish_reason"] == "length"
            out.extend(self._close_all())
        return out

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._open
        if item is None:
            out.extend(self._close_calls())
            item = self._open = self._new("message", "msg")
            out.append(self._added(item, message_item(item.id, "", "in_progress")))
            part = text_part("")
            out.append(self._event("response.content_part.added", **self._at(item), content_index=0, part=part))
        item.text.append(text)
        out.append(
            self._event("response.output_text.delta", **self._at(item), content_index=0, delta=text, logprobs=[])
        )
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            out.extend(self._close_text())
            out.extend(self._close_calls())  # calls come one after another: the earlier one is whole
            item = self._calls[index] = self._new("function_call", "fc")
            item.call_id = call.get("id") or item.id
            item.name = fn.get("name") or ""
            out.append(self._added(item, call_item(item.id, item.call_id, item.name, "", "in_progress")))
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text.append(arguments)
            out.append(
                self._event("response.function_call_arguments.delta", item_id=item.id, **_index(item), delta=arguments)
            )
        return out

    def _new(self, kind: str, prefix: str) -> _Item:
        index = len(self._items)  # every earlier item is closed by now: items come one at a time
        return _Item(index, self._echo.item_id(prefix, index), kind, [])

    def _close_all(self) -> list[bytes]:
        return [*self._close_text(), *self._close_calls()]

    def _close_text(self) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        self._open = None
        text = "".join(item.text)
        status = "incomplete" if self._cut else "completed"
        done = message_item(item.id, text, status)
        self._items.append(done)
        return [
            self._event("response.output_text.done", **self._at(item), content_index=0, text=text, logprobs=[]),
            self._event("response.content_part.done", **self._at(item), content_index=0, part=text_part(text)),
            self._event("response.output_item.done", output_index=item.index, item=done),
        ]

    def _close_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for item in sorted(self._calls.values(), key=lambda i: i.index):
            arguments = "".join(item.text)
            done = call_item(item.id, item.call_id, item.name, arguments, "completed")
            self._items.append(done)
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    **_index(item),
                    name=item.name,
                    arguments=arguments,
                )
            )
            out.append(self._event("response.output_item.done", output_index=item.index, item=done))
        self._calls.clear()
        return out

    def _complete(self) -> list[bytes]:
        out = self._close_all()
        self._ended = True
        status = "incomplete" if self._cut else "completed"
        response = self._echo.response(status, self._items, usage(self._usage), incomplete=self._cut)
        out.append(self._event(f"response.{status}", response=response))
        return out

    def _failed(self, message: str) -> bytes:
        """The one event that ends a stream a failure cut short."""
        self._ended = True
        error = {"code": "server_error", "message": message}
        return self._event("response.failed", response=self._echo.response("failed", self._items, error=error))

    def _added(self, at: _Item, item: dict[str, Any]) -> bytes:
        return self._event("response.output_item.added", output_index=at.index, item=item)

    def _at(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        body = orjson.dumps({"type": kind, "sequence_number": self._seq - 1, **fields})
        return b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n"


def _index(item: _Item) -> dict[str, Any]:
    return {"output_index": item.index}
