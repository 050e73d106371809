"""litellm's exceptions as the ProviderErrors every adapter raises, with nothing of litellm's own in them.

litellm's exception classes alone mislead: a refused connection arrives as InternalServerError 500, a
connect timeout as Timeout 408, and a 403 as APIError. So the transport's own error is looked for
first in the exception's chain, and a status is named by its number, as providers.openai_compat
names it, with the upstream's own error object (when litellm kept it) as the body a client may see.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import aiohttp
import httpx
import orjson

from providers.base import ProviderError, Timeouts

Json = dict[str, Any]
# The setting a deadline comes from; each timeout's message names it, so that the operator (and the
# client, to whom the gateway passes it on) knows which one ran out.
Limit = Literal["connect", "first_token", "idle", "total"]

_CONNECT_TIMED_OUT = (httpx.ConnectTimeout, aiohttp.ConnectionTimeoutError)
_TIMED_OUT = (httpx.TimeoutException, TimeoutError)
_BROKEN = (httpx.TransportError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


def timeout_message(backend: str, limit: Limit, timeouts: Timeouts, *, streaming: bool = False) -> str:
    """Worded as providers.openai_compat words the same deadlines."""
    if limit == "connect":
        return f"{backend}: no connection within {timeouts.connect:g} s (timeouts.connect)"
    if limit == "first_token":
        return f"{backend}: no first event within {timeouts.first_token:g} s (timeouts.first_token)"
    if limit == "idle":
        return f"{backend}: stream stalled: no event for {timeouts.idle:g} s (timeouts.idle)"
    what = "the stream" if streaming else "the answer"
    return f"{backend}: {what} took longer than {timeouts.total:g} s (timeouts.total)"


def failure(
    exc: BaseException, backend: str, llm: Any, timeouts: Timeouts, *, streaming: bool = False
) -> ProviderError:
    """litellm's exception as a ProviderError. A timeout of litellm's own is its read timeout, which
    this adapter sets to ``timeouts.total``; the shorter deadlines are the adapter's, named where
    they are kept."""
    exc = getattr(exc, "original_exception", None) or exc  # MidStreamFallbackError wraps the cause
    chain = _chain(exc)
    if any(isinstance(e, _CONNECT_TIMED_OUT) for e in chain):  # nothing was sent, nothing consumed
        return ProviderError("connect", timeout_message(backend, "connect", timeouts))
    if any(isinstance(e, (llm.Timeout, *_TIMED_OUT)) for e in chain):
        return ProviderError("timeout", timeout_message(backend, "total", timeouts, streaming=streaming))
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    if any(isinstance(e, (llm.APIConnectionError, *_BROKEN)) for e in chain):
        return ProviderError("connect", f"{backend}: {text[:500]}")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status <= 599:
        upstream = _upstream_error(chain, text)
        param, code = (v if isinstance(v, str) else None for v in (upstream.get("param"), upstream.get("code")))
        said = upstream.get("message")
        body = error_body(str(said) if said else f"upstream answered HTTP {status}", status, param, code)
        return ProviderError(
            "status",
            f"{backend}: upstream answered HTTP {status}",
            status=status,
            body=body,
            retry_after=_retry_after(exc),
        )
    return ProviderError("protocol", f"{backend}: {text[:500]}")


def error_body(message: str, status: int, param: str | None, code: str | None) -> bytes:
    """OpenAI's ErrorResponse."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _upstream_error(chain: list[BaseException], text: str) -> Json:
    """The provider's own ``error`` object, when litellm kept it: as the ``body`` of an exception in
    the chain (the openai SDK's, on litellm's OpenAI route), or quoted in litellm's message."""
    body = next((b for e in chain if isinstance(b := getattr(e, "body", None), dict)), None)
    if body is None:
        start, end = text.find("{"), text.rfind("}")
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(text[start : end + 1]) if 0 <= start < end else None
    if not isinstance(body, dict):
        return {}
    error = body.get("error", body)
    return error if isinstance(error, dict) else {"message": error}


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", {})
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        with contextlib.suppress(AttributeError, TypeError, ValueError):  # an HTTP date is not worth parsing
            if (value := headers.get(name)) is not None:
                return float(value) * scale
    return None
