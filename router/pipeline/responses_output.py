"""Response objects of the Responses API, built from what a chat backend answered.

Every Response echoes the request's settings (``Echo``), as OpenAI's do; its output items and
usage come from the chat completion (or, streamed, from its chunks: ``responses_stream``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

_LENGTH = "length"  # chat's finish reason when the output cap stopped the answer


@dataclass(slots=True)
class Echo:
    """A request's settings as its Response repeats them, and the ids its items are named by."""

    id: str
    created_at: int
    fields: dict[str, Any]

    @classmethod
    def of(cls, payload: dict[str, Any], request_id: str) -> Echo:
        fmt = (payload.get("text") or {}).get("format") if isinstance(payload.get("text"), dict) else None
        fields = {
            "model": payload["model"],
            "instructions": payload.get("instructions"),
            "tools": [_tool_echo(t) for t in payload.get("tools") or []],
            "tool_choice": payload.get("tool_choice") or "auto",
            "parallel_tool_calls": payload.get("parallel_tool_calls", True),
            "temperature": payload.get("temperature"),
            "top_p": payload.get("top_p"),
            "metadata": payload.get("metadata") or {},
            "max_output_tokens": payload.get("max_output_tokens"),
            "text": {"format": fmt or {"type": "text"}},
            "previous_response_id": None,
            "store": False,
            "truncation": "disabled",
            "reasoning": None,
        }
        return cls("resp_" + request_id.removeprefix("req_"), int(time.time()), fields)

    def item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.id.removeprefix('resp_')}_{index}"

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: bool = False,
    ) -> dict[str, Any]:
        response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": output,
            **self.fields,
        }
        if usage is not None:  # the schema has no null usage: absent until it is known
            response["usage"] = usage
        return response


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def usage(chat: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat's usage as the Responses API names it (reasoning tokens where the backend gave them)."""
    if not isinstance(chat, dict):
        return None
    prompt = int(chat.get("prompt_tokens") or 0)
    completion = int(chat.get("completion_tokens") or 0)
    details = chat.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    cached = chat.get("prompt_tokens_details")
    cached_tokens = cached.get("cached_tokens") if isinstance(cached, dict) else None
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached_tokens or 0), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning or 0)},
        "total_tokens": prompt + completion,
    }


def message_item(item_id: str, text: str, status: str, refusal: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or refusal is None:
        content.append(text_part(text))
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def from_chat(data: dict[str, Any], echo: Echo) -> dict[str, Any]:
    """The Response for a (non-streamed) chat completion: its first choice's message and calls."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    cut = choice.get("finish_reason") == _LENGTH
    status = "incomplete" if cut else "completed"
    output: list[dict[str, Any]] = []
    text, refusal = message.get("content"), message.get("refusal")
    if text or refusal or not message.get("tool_calls"):
        output.append(message_item(echo.item_id("msg", 0), text or "", status, refusal))
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") or {}
        item_id = echo.item_id("fc", len(output))
        call_id = call.get("id") or item_id
        output.append(call_item(item_id, call_id, fn.get("name") or "", fn.get("arguments") or "", "completed"))
    return echo.response(status, output, usage(data.get("usage")), incomplete=cut)
