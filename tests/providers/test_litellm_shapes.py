"""The usage the litellm adapter reports, by table: the upstream's own as it sent it, litellm's
translation of another provider's format, or none at all. Through litellm end to end, the same
rules are tested in the contract suite (test_contract.py) and against the Anthropic sim."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.litellm_shapes import answer_usage, chunk_payloads, stream_usage

CHAT = {"id": "x", "object": "chat.completion", "choices": []}
ZEROS = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}  # litellm's in place of none
TRANSLATED = {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}


@pytest.mark.parametrize(
    ("answer", "rebuilt", "expected"),
    [
        # an answer in OpenAI's shape: its usage as written, whatever litellm made of it
        (
            {**CHAT, "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}},
            TRANSLATED,
            {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        ),
        (
            {**CHAT, "usage": {"prompt_tokens": True, "completion_tokens": "3"}},
            {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            {"prompt_tokens": True, "completion_tokens": "3"},
        ),
        (
            {**CHAT, "usage": {"prompt_tokens": -7, "completion_tokens": 3}},
            TRANSLATED,
            {"prompt_tokens": -7, "completion_tokens": 3, "total_tokens": -4},
        ),
        ({**CHAT, "usage": None}, ZEROS, None),
        (CHAT, ZEROS, None),
        (CHAT, TRANSLATED, None),
        # another provider's format: litellm's translation, unless it is litellm's zeros for none
        ({"type": "message", "usage": {"input_tokens": 8, "output_tokens": 5}}, TRANSLATED, TRANSLATED),
        ({"type": "message"}, ZEROS, None),
        (None, TRANSLATED, TRANSLATED),
        (None, {"prompt_tokens": "8", "completion_tokens": 5}, None),
    ],
    ids=[
        "reported",
        "wrong-types",
        "no-total",
        "null",
        "missing",
        "missing-counted-by-litellm",
        "other-format",
        "other-none",
        "unseen",
        "unseen-not-integers",
    ],
)
def test_an_answers_usage(answer: dict[str, Any] | None, rebuilt: dict[str, Any], expected: Any) -> None:
    assert answer_usage(answer, rebuilt) == expected


def test_an_embeddings_usage_has_no_completion() -> None:
    answer = {"object": "list", "data": [], "usage": {"prompt_tokens": 2}}
    assert answer_usage(answer, None, ("prompt_tokens", "total_tokens")) == {"prompt_tokens": 2, "total_tokens": 2}
    assert answer_usage({"object": "list", "data": []}, {"prompt_tokens": 0}, ("prompt_tokens", "total_tokens")) is None


@pytest.mark.parametrize(("reported", "expected"), [(True, TRANSLATED), (False, None)])
def test_a_streams_usage_only_if_the_upstream_reported_one(reported: bool, expected: Any) -> None:
    assert stream_usage(TRANSLATED, reported) == expected
    chunk = {"id": "c", "created": 1, "model": "m", "choices": [], "usage": TRANSLATED}
    payloads = [orjson.loads(p) for p in chunk_payloads(chunk, set(), reported)]
    assert payloads == ([{**chunk, "object": "chat.completion.chunk"}] if reported else [])
