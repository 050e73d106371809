"""What the simulated backend reads and writes: request checks, answer bodies and SSE frames,
in OpenAI's and Anthropic's shapes.

Generation is deterministic: the reply's words, repeated or cut to ``max_tokens`` (or
``max_completion_tokens``), 16 when neither is given, each sent as a ``"word "`` piece.
Everything here is a pure function of the request, so ``backend`` keeps only the serving.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import struct
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from aiohttp import web

DONE = b"data: [DONE]\n\n"
TOOL_ARGUMENTS = ('{"location": ', '"Paris"}')  # streamed as two fragments, as OpenAI does

Body = dict[str, Any]
Frames = Iterator[tuple[bytes, bool]]  # (bytes to send, whether they hold a content chunk)


class ApiError(Exception):
    """An error answered in OpenAI's shape; a 429 also says ``retry-after: 0``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> web.Response:
        kind, code = ("server_error", None) if self.status >= 500 else ("invalid_request_error", None)
        if self.status == 429:
            kind, code = "requests", "rate_limit_exceeded"
        error = {"message": self.message, "type": kind, "param": self.param, "code": code}
        response = json_response({"error": error}, self.status)
        if self.status == 429:
            response.headers["retry-after"] = "0"
        return response


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def words(content: Any) -> int:
    """Whitespace-separated words in a string or in a list of text parts."""
    if isinstance(content, list):
        return sum(words(part.get("text")) for part in content if isinstance(part, dict))
    return len(content.split()) if isinstance(content, str) else 0


def messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' must be a list", "messages")
    return sum(words(m.get("content")) + 3 for m in messages if isinstance(m, dict))


def positive_int(body: Body, key: str, default: int, maximum: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= maximum:
        raise ApiError(400, f"'{key}' must be an integer between 1 and {maximum}", key)
    return value


def plan(body: Body, reply: str) -> tuple[list[str], bool]:
    """The pieces to generate and whether the client's token limit cut them."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    count = positive_int(body, key, 16, 1 << 20)
    words = itertools.cycle(reply.split() or ["..."])
    return [word + " " for word in itertools.islice(words, count)], body.get(key) is not None


def tool_name(body: Body) -> str | None:
    """The function to call instead of answering with text, or None."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    chosen = choice if isinstance(choice, dict) else tools[0]
    function = chosen.get("function") if isinstance(chosen, dict) else None
    return str(function.get("name", "tool")) if isinstance(function, dict) else "tool"


def streamed_usage(body: Body, usage: Body | None) -> Body | None:
    """The usage to stream: only when asked for with ``stream_options.include_usage``."""
    options = body.get("stream_options")
    return usage if isinstance(options, dict) and options.get("include_usage") else None


def without_null_usage(body: Body) -> Body:
    return body if body.get("usage") is not None else {k: v for k, v in body.items() if k != "usage"}


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def openai_frames(
    base: Body, first: list[Body], steps: Iterable[list[Body]], last: list[Body], usage: Body | None
) -> Frames:
    """OpenAI SSE: ``first``, one counted frame per step, ``last``, the usage chunk, then [DONE].

    ``usage`` is None unless it must be sent; then every chunk carries ``"usage": null``.
    """
    head = b"data: " + orjson.dumps(base)[:-1] + b',"choices":'
    tail = b"}\n\n" if usage is None else b',"usage":null}\n\n'

    def frame(choices: list[Body]) -> bytes:  # one chunk per choice, as OpenAI does
        return b"".join(head + orjson.dumps([choice]) + tail for choice in choices)

    if first:
        yield frame(first), False
    for step in steps:
        yield frame(step), True
    yield frame(last), False
    if usage is not None:
        yield head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n", False
    yield DONE, False


def anthropic_event(kind: str, **fields: Any) -> bytes:
    """One Anthropic SSE event."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) for t in value)


def embedding_inputs(raw: Any) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and _is_tokens(raw):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) or _is_tokens(x) for x in raw):
        return raw
    raise ApiError(400, "'input' must be a string, a list of strings or a list of token arrays", "input")


def unit_vector(key: bytes, dims: int) -> array[float]:
    """A deterministic float32 unit vector derived from a hash of ``key``."""
    values = [v - 32767.5 for v in struct.unpack(f"<{dims}H", hashlib.shake_256(key).digest(2 * dims))]
    norm = math.sqrt(sum(v * v for v in values))
    return array("f", [v / norm for v in values])


def usage_counts(prompt: int, choices: int, pieces: list[str]) -> Body:
    completion = choices * len(pieces)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
