"""An inference request's body checked and read once, into the fields the pipeline routes on;
and the rewrites the gateway makes of it (an output cap, the planned model) serialised once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from policies.base import RequestShape
from providers.base import Endpoint
from router.errors import InvalidRequest, ModelNotFound
from router.pipeline.body import optional_int, parse_object, require
from router.pipeline.dispatch import dump_object
from router.pipeline.overrides import strip as strip_overrides
from router.pipeline.planner import request_needs
from router.tenancy.admission.base import DEFAULT_MAX_OUTPUT
from router.tenancy.tenants import Caller

_DEFAULT_MAX_OUTPUT = 256


@dataclass(slots=True)  # not frozen: built on every request, and a frozen __init__ costs several times as much
class Parsed:
    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    client_usage: bool
    shape: RequestShape


def check(endpoint: Endpoint, body: bytes) -> Parsed:
    payload = parse_object(body)
    model = require(payload, "model", str, "a string")
    if endpoint == "chat/completions":
        messages = require(payload, "messages", list, "an array of messages")
        if not messages:
            raise InvalidRequest(
                "'messages' must contain at least one message.", param="messages", code="invalid_value"
            )
        max_out = optional_int(payload, "max_completion_tokens") or optional_int(payload, "max_tokens")
    elif endpoint == "completions":
        require(payload, "prompt", (str, list), "a string or an array")
        max_out = optional_int(payload, "max_tokens")
    else:
        require(payload, "input", (str, list), "a string or an array")
        max_out = 0
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type")
    if stream and endpoint == "embeddings":
        raise InvalidRequest("Embeddings cannot be streamed.", param="stream", code="invalid_value")
    opts = payload.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not stream):
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true and must be an object.",
            param="stream_options",
            code="invalid_value",
        )
    client_usage = bool(stream and opts and opts.get("include_usage") is True)
    shape = RequestShape(
        len(body) // 4, _DEFAULT_MAX_OUTPUT if max_out is None else max_out, request_needs(endpoint, payload)
    )
    return Parsed(body, payload, model, bool(stream), client_usage, shape)


def allowed(tenant: Caller, model: str) -> str:
    if not tenant.may_use(model):  # the key's model allow-list: answered as OpenAI does, not found
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    return model


def capped(parsed: Parsed) -> Parsed:
    """A request of a tenant with a hard budget and no max output gets the default one, so the
    backend stops where the budget reservation does."""
    payload = {**parsed.payload, "max_tokens": DEFAULT_MAX_OUTPUT}
    return replace(
        parsed,
        body=dump_object(payload),
        payload=payload,
        shape=replace(parsed.shape, max_output_tokens=DEFAULT_MAX_OUTPUT),
    )


def retarget(parsed: Parsed, model: str) -> Parsed:
    """The request without the gateway's routing fields and for the model planned, serialised
    once here so that every attempt sends the same bytes."""
    payload = strip_overrides(parsed.payload)
    payload["model"] = model
    return replace(parsed, body=dump_object(payload), payload=payload, model=model)
