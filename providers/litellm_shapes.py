"""litellm's answers rebuilt in OpenAI's schemas, and the usage their upstream reported, as it reported it.

litellm rebuilds every answer in its own types, and in doing so it invents what the upstream did not
send: zeros for a missing usage in an answer, its own count in a stream, coerced counts ("3" -> 3,
true -> 1). The gateway bills a backend's counts as the backend's own (``tokens_source="upstream"``)
only when they are believable, and counts them itself otherwise; so what is reported here is what
the upstream sent or nothing, never litellm's guess.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterable
from typing import Any

import orjson

Json = dict[str, Any]

_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# The counts of a usage object in OpenAI's schemas, by endpoint: chat's, then embeddings'.
_CHAT_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_EMBEDDING_COUNTS = ("prompt_tokens", "total_tokens")


# -- usage --------------------------------------------------------------------------------------


def answer_usage(answer: Json | None, rebuilt: object, counts: tuple[str, ...] = _CHAT_COUNTS) -> Json | None:
    """The usage of an answer (not a stream): ``answer`` is the upstream's own, as litellm received
    it (None if litellm did not hand it over), ``rebuilt`` litellm's usage from its answer.

    An upstream answer in OpenAI's shape (litellm's OpenAI route) gives its usage as it wrote it, or
    none. Another provider's usage has another format (Anthropic's ``input_tokens``, Gemini's
    ``usageMetadata``), which only litellm translates: its counts are taken, unless they are the
    zeros litellm puts in place of a usage that was missing, since no prompt is 0 tokens.
    """
    if answer is not None and ("choices" in answer or "data" in answer):
        usage = answer.get("usage")
        return _as_sent(usage, counts) if isinstance(usage, dict) else None
    translated = _integers(rebuilt, counts)
    if translated is None or not any(translated.values()):
        return None
    return translated


def stream_usage(rebuilt: object, reported: bool) -> Json | None:
    """The usage of a stream: litellm's count of what the upstream reported, or nothing if it
    reported nothing (``reported``), when litellm counts the tokens itself. litellm's stream
    reaches the adapter rebuilt, so its counts are litellm's integers (see the module docstring)."""
    return _integers(rebuilt, _CHAT_COUNTS) if reported else None


def _as_sent(usage: Json, counts: tuple[str, ...]) -> Json:
    """The counts as the upstream wrote them, whatever their type: the gateway judges them. A
    missing total is the sum, when the parts are integers to add."""
    sent = {key: usage[key] for key in counts if key in usage}
    parts = [sent.get(key) for key in counts[:-1]]
    if "total_tokens" not in sent and all(type(part) is int for part in parts):
        sent["total_tokens"] = sum(parts)
    return sent


def _integers(rebuilt: object, counts: tuple[str, ...]) -> Json | None:
    if not isinstance(rebuilt, dict):
        return None
    *parts, total_key = counts
    values = [rebuilt.get(key) for key in parts]
    if not all(type(value) is int for value in values):
        return None
    total = rebuilt.get(total_key)
    return {**dict(zip(parts, values, strict=True)), total_key: total if type(total) is int else sum(values)}


# -- answers ------------------------------------------------------------------------------------


def chat_completion(raw: Json, usage: Json | None) -> Json:
    """CreateChatCompletionResponse."""
    choices = [
        {
            "index": choice.get("index", i),
            "message": _message(choice.get("message") or {}),
            "logprobs": _logprobs(choice.get("logprobs")),
            "finish_reason": _finish(choice.get("finish_reason")) or "stop",
        }
        for i, choice in enumerate(raw.get("choices") or [])
    ]
    data = {
        "id": raw["id"],
        "object": "chat.completion",
        "created": raw["created"],
        "model": raw["model"],
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return data


def _message(raw: Json) -> Json:
    content, refusal = (v if isinstance(v, str) else None for v in (raw.get("content"), raw.get("refusal")))
    message: Json = {"role": "assistant", "content": content, "refusal": refusal}
    if calls := [_tool_call(call) for call in raw.get("tool_calls") or []]:
        message["tool_calls"] = calls
    return message


def _tool_call(raw: Json) -> Json:
    function = raw.get("function") or {}
    return {
        "id": raw.get("id") or f"call_{os.urandom(12).hex()}",
        "type": "function",
        "function": {"name": function.get("name") or "", "arguments": function.get("arguments") or ""},
    }


def embedding_list(raw: Json, as_base64: bool, answer: Json | None) -> Json:
    """CreateEmbeddingResponse; base64 is little-endian float32, as OpenAI encodes it."""
    items = sorted(enumerate(raw.get("data") or []), key=lambda pair: pair[1].get("index", pair[0]))
    data = [
        {"object": "embedding", "index": item.get("index", i), "embedding": _vector(item["embedding"], as_base64)}
        for i, item in items
    ]
    listed: Json = {"object": "list", "data": data, "model": raw["model"]}
    if (usage := answer_usage(answer, raw.get("usage"), _EMBEDDING_COUNTS)) is not None:
        listed["usage"] = usage
    return listed


def _vector(values: Any, as_base64: bool) -> Any:
    if as_base64 and isinstance(values, list):
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return values


# -- stream chunks ------------------------------------------------------------------------------


def chunk_payloads(raw: Json, opened: set[int], usage_reported: bool) -> Iterable[bytes]:
    """CreateChatCompletionStreamResponse: the chunk's choices, then its usage as a chunk apart."""
    head = {"id": raw["id"], "object": "chat.completion.chunk", "created": raw["created"], "model": raw["model"]}
    if choices := [_chunk_choice(choice, opened) for choice in raw.get("choices") or []]:
        yield orjson.dumps({**head, "choices": choices})
    if (usage := stream_usage(raw.get("usage"), usage_reported)) is not None:
        yield orjson.dumps({**head, "choices": [], "usage": usage})


def _chunk_choice(raw: Json, opened: set[int]) -> Json:
    index = raw.get("index") or 0
    given = raw.get("delta") or {}
    delta: Json = {}
    if index not in opened:  # OpenAI names the role once, in a choice's first chunk
        opened.add(index)
        delta["role"] = "assistant"
    if isinstance(content := given.get("content"), str):
        delta["content"] = content
    if calls := [_tool_call_delta(call, i) for i, call in enumerate(given.get("tool_calls") or [])]:
        delta["tool_calls"] = calls
    return {
        "index": index,
        "delta": delta,
        "logprobs": _logprobs(raw.get("logprobs")),
        "finish_reason": _finish(raw.get("finish_reason")),
    }


def _tool_call_delta(raw: Json, position: int) -> Json:
    call: Json = {"index": raw.get("index", position)}
    if raw.get("id"):
        call |= {"id": raw["id"], "type": "function"}
    given = raw.get("function") or {}
    function = {key: given[key] for key in ("name", "arguments") if isinstance(given.get(key), str)}
    if function:
        call["function"] = function
    return call


def _finish(reason: Any) -> str | None:
    return None if reason is None else reason if reason in _FINISH else "stop"


def _logprobs(raw: Any) -> Json | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    return {"content": raw["content"], "refusal": raw.get("refusal")}
