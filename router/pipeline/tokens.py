"""Token counting at the gateway, for upstreams that do not report usage.

Uses tiktoken's cl100k_base with the BPE file litellm ships inside its wheel, so counting never
reaches the network. Counts are exact for OpenAI's models and a close estimate for others.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.load import load_tiktoken_bpe

# The file name is tiktoken's cache key (sha1 of its download URL) for cl100k_base.
_CL100K_FILE = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
_PER_MESSAGE = 3  # OpenAI's chat format adds about three tokens of framing per message


def _bundled_bpe() -> Path:
    # find_spec does not import litellm, which would cost seconds at start-up.
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("litellm is not installed; its bundled tokenizer file is needed")
    return Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers" / _CL100K_FILE


class TokenCounter:
    def __init__(self) -> None:
        self._enc: tiktoken.Encoding | None = None

    def _encoding(self) -> tiktoken.Encoding:
        if self._enc is None:
            ranks = load_tiktoken_bpe(str(_bundled_bpe()))
            self._enc = tiktoken.Encoding("cl100k_base", pat_str=_PAT, mergeable_ranks=ranks, special_tokens=_SPECIAL)
        return self._enc

    def warm(self) -> None:
        self._encoding()

    def count(self, text: str) -> int:
        return len(self._encoding().encode_ordinary(text)) if text else 0

    def count_prompt(self, payload: dict[str, Any]) -> int:
        """Prompt tokens of a chat, completion or embeddings request."""
        if "messages" in payload:
            messages = payload["messages"] if isinstance(payload["messages"], list) else []
            return sum(_PER_MESSAGE + self.count(_text_of(m)) for m in messages) + 3
        for key in ("prompt", "input"):
            if key in payload:
                return self.count(_text_of(payload[key]))
        return 0


_MAX_DEPTH = 32  # deeper than any message or content-part shape; a body may nest far more


def _text_of(value: Any, depth: int = 0) -> str:
    """The text inside a message, content part list or prompt, whatever its shape: what it
    cannot read (a tool call that is not an object, nesting past any real shape) counts nothing."""
    if isinstance(value, str):
        return value
    if depth >= _MAX_DEPTH:
        return ""
    if isinstance(value, list):
        return " ".join(_text_of(v, depth + 1) for v in value if not isinstance(v, int))
    if isinstance(value, dict):
        parts = [value.get("content"), value.get("text"), value.get("name")]
        calls = value.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.append(function.get("arguments"))
        return " ".join(_text_of(p, depth + 1) for p in parts if p)
    return ""
