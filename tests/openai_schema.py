"""Validation against OpenAI's published API description, vendored in tests/data/openai-api/ (see its README)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parent / "data" / "openai-api" / "openapi.yaml"
_URI = "urn:openai-openapi"


@cache
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = _honour_nullable(yaml.load(SPEC.read_text(), Loader=loader))
    return Registry().with_resource(_URI, Resource.from_contents(document, default_specification=DRAFT202012))


def _honour_nullable(node: Any) -> Any:
    """The description is OpenAPI 3.1 but keeps 3.0's ``nullable: true`` in places, which JSON
    Schema ignores; read it as OpenAPI means it: null is allowed there too."""
    if isinstance(node, list):
        return [_honour_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _honour_nullable(v) for k, v in node.items()}
    if out.get("nullable") is True:
        return {"anyOf": [{k: v for k, v in out.items() if k != "nullable"}, {"type": "null"}]}
    return out


def validate(instance: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless instance conforms to components/schemas/NAME."""
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{_URI}#/components/schemas/{schema_name}"}, registry=_registry()
    )
    validator.validate(instance)


# The schema of each Responses stream event type, by its ``type``.
RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}


def validate_response_event(event: Any) -> None:
    """Raise unless ``event`` is a Responses stream event: its own type's schema (whose errors say
    more than the union's), and ResponseStreamEvent, the union every event must belong to."""
    validate(event, RESPONSE_EVENT_SCHEMAS[event["type"]])
    validate(event, "ResponseStreamEvent")
