"""The Responses API (``POST /v1/responses``) served by backends that speak only Chat Completions.

A Responses request is translated here into the equivalent chat request, which then takes the
whole chat path unchanged (routing, fallback before the first event, limits, budgets, metering,
the ledger): so a Responses request is billed exactly as the chat request it stands for. Its
answer is translated back (``responses_output``, ``responses_stream``).

The gateway keeps no response state. What needs it (``previous_response_id``, ``store: true``,
``conversation``, ``background``, stored prompts, item references) is refused with a 400 naming
the field, rather than half-done. Fields that are not the Responses API's pass through to the
backend as they do on chat (llama.cpp's sampling extensions, the gateway's routing fields).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, Protocol

import orjson

from providers.base import Endpoint
from router.errors import InvalidRequest
from router.metrics import Metrics
from router.pipeline.answer import Answer, StreamAnswer
from router.pipeline.body import optional_int, parse_object, require
from router.pipeline.responses_output import Echo, from_chat
from router.pipeline.responses_stream import ResponseEvents
from router.pipeline.streaming import EarlyWrite
from router.tenancy.tenants import Tenancy

# An inference route: an upstream endpoint, or the Responses API that is translated to one.
Route = Endpoint | Literal["responses"]


class ChatPath(Protocol):
    """What a Responses request goes through: the gateway (a protocol, as the gateway imports this)."""

    tenancy: Tenancy
    metrics: Metrics

    async def handle(
        self,
        endpoint: Route,
        authorization: str | None,
        body: bytes,
        request_id: str,
        early: EarlyWrite | None = None,
    ) -> Answer | StreamAnswer: ...


# Fields of the Responses API with no chat equivalent that change nothing a chat backend does.
_DROPPED = frozenset(
    {
        "include",
        "truncation",
        "stream_options",
        "max_tool_calls",
        "top_logprobs",
        "prompt_cache_retention",
        "prompt_cache_options",
        "context_management",
        "moderation",
    }
)
# Fields that need state kept by the server, with what makes them need it.
_STATEFUL: dict[str, Callable[[Any], bool]] = {
    "previous_response_id": lambda v: v is not None,
    "store": lambda v: v is True,
    "conversation": lambda v: v is not None,
    "background": lambda v: v is True,
    "prompt": lambda v: v is not None,
}
_TRANSLATED = frozenset({"input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "reasoning"})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


async def respond(
    gateway: ChatPath, authorization: str | None, body: bytes, request_id: str, early: EarlyWrite | None
) -> Answer | StreamAnswer:
    """A Responses request, answered through the chat path with its answer translated back."""
    try:
        payload = parse_object(body)
        chat = to_chat(payload)
        echo = Echo.of(payload, request_id)
    except InvalidRequest:
        await gateway.tenancy.authenticate(authorization)  # a bad key is answered first, as on chat
        gateway.metrics.refused("responses", "client_error")
        raise
    chat_body = orjson.dumps(chat)
    if not chat.get("stream"):
        answer = await gateway.handle("chat/completions", authorization, chat_body, request_id)
        assert isinstance(answer, Answer)
        answer.body = orjson.dumps(from_chat(orjson.loads(answer.body), echo))
        return answer
    events = ResponseEvents(echo)
    translated: EarlyWrite | None = None
    if early is not None:

        def translated(headers: list[tuple[bytes, bytes]], first: bytes) -> None:
            early(headers, events.feed(first))

    stream = await gateway.handle("chat/completions", authorization, chat_body, request_id, translated)
    assert isinstance(stream, StreamAnswer)
    stream.events = events.relay(stream.events)
    return stream


def to_chat(payload: dict[str, Any]) -> dict[str, Any]:
    """The chat request a Responses request stands for; 400 naming the field it cannot take."""
    require(payload, "model", str, "a string")
    for name, needs_state in _STATEFUL.items():
        if needs_state(payload.get(name)):
            raise InvalidRequest(
                f"'{name}' needs state kept by the server, and this gateway keeps no response state: "
                "send the whole conversation in 'input' instead (and 'store': false).",
                param=name,
                code="unsupported_parameter",
            )
    chat: dict[str, Any] = {k: v for k, v in payload.items() if k not in _TRANSLATED and k not in _DROPPED}
    for name in _STATEFUL:
        chat.pop(name, None)
    chat["messages"] = _messages(payload)
    if "tools" in payload and payload["tools"] is not None:
        chat["tools"] = _tools(payload["tools"])
    if payload.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(payload["tool_choice"])
    response_format = _text_format(payload.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    max_out = optional_int(payload, "max_output_tokens")
    if max_out is not None:
        chat["max_tokens"] = max_out
    effort = _effort(payload.get("reasoning"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    if chat.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    return chat


def _messages(payload: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _invalid("instructions", "a string")
        messages.append({"role": "system", "content": instructions})
    raw = require(payload, "input", (str, list), "a string or an array of input items")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    else:
        for i, item in enumerate(raw):
            _add_item(messages, item, f"input[{i}]")
    if not any(m["role"] != "system" for m in messages):
        raise InvalidRequest("'input' must hold at least one input item.", param="input", code="invalid_value")
    return messages


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _invalid(where, "an input item object")
    kind = item.get("type", "message")
    if kind == "message":
        role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise _invalid(f"{where}.role", "one of 'user', 'assistant', 'system', 'developer'")
        messages.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
    elif kind == "function_call":
        call = {
            "id": _string(item, "call_id", where),
            "type": "function",
            "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant message, as chat has them
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _content(output, f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": text})
    elif kind == "reasoning":
        pass  # the model's own earlier reasoning: a chat backend has no way to take it back
    elif kind == "item_reference":
        raise InvalidRequest(
            f"'{where}' refers to a stored item, and this gateway keeps none: send the item itself.",
            param=f"{where}.type",
            code="unsupported_parameter",
        )
    else:
        raise InvalidRequest(
            f"Input items of type {kind!r} are not supported: this gateway takes 'message', "
            "'function_call', 'function_call_output' and 'reasoning' items.",
            param=f"{where}.type",
            code="invalid_value",
        )


def _content(content: Any, where: str) -> Any:
    """A message's content as chat has it: a string, or an array of text and image parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(where, "a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _string(part, "text", at)})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _string(part, "refusal", at)})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(
                    f"'{at}.image_url' must be a URL or a data URL: this gateway keeps no files for 'file_id'.",
                    param=f"{at}.image_url",
                    code="invalid_value",
                )
            image: dict[str, Any] = {"url": url}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"Content parts of type {kind!r} are not supported: this gateway takes 'input_text' and "
                "'input_image' parts (and 'output_text' in assistant messages).",
                param=f"{at}.type",
                code="invalid_value",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain text: what every chat template takes
    return parts


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _invalid("tools", "an array of tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise InvalidRequest(
                f"Tools of type {kind!r} are not supported: this gateway serves function tools only "
                "(no built-in web search, file search, computer use or other hosted tools).",
                param=f"tools[{i}].type",
                code="invalid_value",
            )
        function: dict[str, Any] = {"name": _string(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        "'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}: "
        "this gateway serves function tools only.",
        param="tool_choice",
        code="invalid_value",
    )


def _text_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``; its JSON schema is checked to be one."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _invalid("text", "an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _invalid("text.format.type", "one of 'text', 'json_object', 'json_schema'")
    assert isinstance(fmt, dict)
    name = fmt.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _invalid("text.format.name", "a name of 1 to 64 letters, digits, '_' or '-'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _invalid("text.format.schema", "a JSON Schema object")
    _check_schema(schema)
    if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
        raise _invalid("text.format.strict", "a boolean")
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": spec}


def _check_schema(schema: dict[str, Any]) -> None:
    # Imported only for a request that gives a schema: the core starts without it.
    import jsonschema  # type: ignore[import-untyped]

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise InvalidRequest(
            f"Invalid JSON schema in 'text.format.schema{at}': {exc.message}.",
            param="text.format.schema",
            code="invalid_value",
        ) from None


def _effort(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _invalid("reasoning", "an object")
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise _invalid("reasoning.effort", "a string")
    return effort


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(
            f"Missing or invalid '{where}.{key}': expected a string.", param=f"{where}.{key}", code="invalid_value"
        )
    return value


def _invalid(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': expected {expected}.", param=param, code="invalid_value")


__all__ = ["Route", "respond", "to_chat"]
