"""Checking request bodies: JSON objects and their fields."""

from __future__ import annotations

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
    return data


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
