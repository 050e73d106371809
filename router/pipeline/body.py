"""Checking request bodies: JSON objects and their fields."""

from __future__ import annotations

import json
from typing import Any

import orjson

from router.errors import InvalidRequest


def parse_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; a JSON object was expected.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    _refuse_duplicate_keys(body, data)
    return data


def _refuse_duplicate_keys(body: bytes, data: dict[str, Any]) -> None:
    """400 if an object in the body repeats a key. orjson keeps the last, but the body is
    forwarded as the client's bytes, which an upstream may read otherwise: the gateway would
    budget for one ``max_tokens`` and the backend generate another.

    orjson cannot report duplicates, so the hot path counts colons. Written again, the parsed body
    has every colon the client wrote (one after each key, and those in strings) plus one for each
    colon escaped as ``\\u003a``, less those of any key-value pair a duplicate dropped, which holds
    at least its key's. So the counts agree exactly when nothing was dropped; when they do not (a
    stray escape, or a duplicate) the body is parsed again by the standard library, which shows
    each key."""
    expected = body.count(b":")
    if b"\\u" in body:
        expected += body.count(b"\\u003a") + body.count(b"\\u003A")
    try:
        if orjson.dumps(data).count(b":") == expected:
            return
    except orjson.JSONEncodeError:
        pass  # nested past orjson's writing limit: checked below
    try:
        json.loads(body, object_pairs_hook=_unique)
    except RecursionError:
        raise InvalidRequest("The JSON body of your request is nested too deeply.", code="nested_too_deeply") from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidRequest(
                f"Duplicate key {key!r} in the JSON body: each key may appear once in an object.",
                param=key,
                code="duplicate_key",
            )
        seen.add(key)
    return obj  # not reached: a shorter dict means a key came twice


def require(payload: dict[str, Any], name: str, kinds: type | tuple[type, ...], what: str) -> Any:
    if name not in payload or payload[name] is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    value = payload[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise InvalidRequest(f"Invalid type for '{name}': expected {what}.", param=name, code="invalid_type")
    return value


def optional_int(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(
            f"Invalid value for '{name}': expected a non-negative integer.", param=name, code="invalid_value"
        )
    return value
