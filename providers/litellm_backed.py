"""Providers that do not speak OpenAI's API (Anthropic, Gemini, Bedrock, Cohere ...), through litellm.

Requests arrive in OpenAI's shape with ``model`` already the litellm name ("anthropic/claude-...");
answers leave in OpenAI's shape, with nothing of litellm's own in them. litellm is imported when the
first such backend is built, because importing it costs seconds. Its retries are off: retrying and
falling back belong to ``router.pipeline.dispatch``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
import httpx
import orjson

from providers.base import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUTS,
    BackendInfo,
    Limits,
    ProviderError,
    Timeouts,
    UpstreamRequest,
    UpstreamResponse,
)

Json = dict[str, Any]

# The only request fields passed on: OpenAI's parameters that litellm translates per provider. Any
# other key in a client's body (api_base, api_key, mock_response ...) would steer litellm itself.
_CHAT_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
_EMBEDDING_PARAMS = frozenset({"dimensions", "user"})
# litellm drops what a provider lacks (drop_params), so that the seed or presence_penalty many clients
# send by habit does not fail the request. Dropping these would change the answer's shape instead, so
# a backend that lacks them refuses; each maps to its neutral value, which needs no support.
_SHAPING: dict[str, object] = {"n": 1, "logprobs": False, "top_logprobs": 0, "dimensions": None}
_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_TIMED_OUT = (httpx.TimeoutException, TimeoutError)
_BROKEN = (httpx.TransportError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


def _import_litellm() -> Any:
    """litellm, told never to fetch anything on its own (price map, Anthropic beta headers,
    tokenizers) and not to print advice on stdout."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    import litellm

    litellm.suppress_debug_info = True
    if hasattr(litellm, "telemetry"):  # a flag of older releases
        litellm.telemetry = False
    return litellm


class LiteLLMProvider:
    def __init__(
        self,
        info: BackendInfo,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        # ``limits`` bound the gateway's own HTTP client (providers.http1); litellm reads answers
        # with its own (httpx, aiohttp), which this adapter cannot bound, so only the time limits
        # apply to a litellm backend.
        del limits
        self.info = info
        self._llm = _import_litellm()
        # No base_url or key: litellm uses the provider's public endpoint and its usual env variable.
        self._common: Json = {
            "api_base": base_url or None,
            "api_key": api_key or None,
            "num_retries": 0,
            "max_retries": 0,
            "drop_params": True,
        }
        # litellm honours a separate connect timeout on some chat routes (OpenAI, Azure, Bedrock) and
        # reduces it to the total on the others; its embedding routes take a number only.
        self._timeouts = {
            "chat_completion": httpx.Timeout(timeouts.total, connect=timeouts.connect),
            "embeddings": timeouts.total,
        }
        self._first_token = timeouts.first_token
        self._idle = timeouts.idle
        self._total = timeouts.total

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.endpoint == "embeddings":
            return await self._embed(request.payload)
        if request.endpoint != "chat/completions":
            raise self._unsupported(request.endpoint)
        payload = request.payload
        kwargs = self._kwargs(payload, _CHAT_PARAMS, "chat_completion")
        try:
            response = await self._llm.acompletion(
                model=payload["model"], messages=payload.get("messages"), stream=False, **kwargs
            )
        except Exception as exc:
            raise self._failure(exc) from exc
        data = self._normalised(_chat_completion, response)
        return UpstreamResponse(body=orjson.dumps(data), data=data)

    async def stream(self, request: UpstreamRequest) -> ChunkStream:
        if request.endpoint != "chat/completions":
            raise self._unsupported(request.endpoint)
        payload = request.payload
        kwargs = self._kwargs(payload, _CHAT_PARAMS, "chat_completion")
        now = asyncio.get_running_loop().time()
        first_due, end = now + self._first_token, now + self._total
        try:
            async with asyncio.timeout_at(min(first_due, end)):
                chunks = await self._llm.acompletion(
                    model=payload["model"],
                    messages=payload.get("messages"),
                    stream=True,
                    stream_options={"include_usage": True},
                    **kwargs,
                )
        except TimeoutError:
            raise ProviderError("timeout", f"{self.info.name}: no response within the time limit") from None
        except Exception as exc:
            raise self._failure(exc) from exc
        stream = ChunkStream(chunks, self._failure, self.info.name, first_due=first_due, idle=self._idle, end=end)
        try:
            await stream.fill()  # the first event, so that a failure to start is still the router's to hide
        except StopAsyncIteration:
            await stream.aclose()
            raise ProviderError("protocol", f"{self.info.name}: stream ended before any event") from None
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def close(self) -> None:
        """Nothing to release: litellm pools its clients per process and closes them at exit."""

    async def _embed(self, payload: Json) -> UpstreamResponse:
        kwargs = self._kwargs(payload, _EMBEDDING_PARAMS, "embeddings")
        try:
            # Floats always: not every provider can send base64, so it is encoded here when asked.
            response = await self._llm.aembedding(model=payload["model"], input=payload.get("input"), **kwargs)
        except Exception as exc:
            raise self._failure(exc) from exc
        as_base64 = payload.get("encoding_format") == "base64"
        data = self._normalised(lambda raw: _embedding_list(raw, as_base64), response)
        return UpstreamResponse(body=orjson.dumps(data), data=data)

    def _kwargs(self, payload: Json, allowed: frozenset[str], kind: str) -> Json:
        params = {k: v for k, v in payload.items() if k in allowed and v is not None}
        asked = [k for k, neutral in _SHAPING.items() if params.get(k, neutral) != neutral]
        if asked:
            try:
                supported = self._llm.get_supported_openai_params(model=payload.get("model"), request_type=kind)
            except Exception:  # an unknown provider: litellm itself will say so when called
                supported = None
            if missing := [k for k in asked if supported is not None and k not in supported]:
                message = f"{self.info.name} ({payload.get('model')}) cannot honour '{missing[0]}'"
                raise ProviderError(
                    "status", message, status=400, body=_error_body(message, 400, missing[0], "unsupported_parameter")
                )
        return {**params, **self._common, "timeout": self._timeouts[kind]}

    def _normalised(self, convert: Callable[[Json], Json], response: Any) -> Json:
        try:
            return convert(response.model_dump())
        except (AttributeError, KeyError, TypeError, ValueError, struct.error) as exc:
            raise ProviderError("protocol", f"{self.info.name}: unexpected answer from litellm: {exc!r}") from exc

    def _unsupported(self, endpoint: str) -> ProviderError:
        what = (
            f"/v1/{endpoint} cannot be streamed"
            if endpoint != "completions"
            else "legacy completions (/v1/completions) are not supported for litellm backends; use /v1/chat/completions"
        )
        message = f"{self.info.name}: {what}"
        body = _error_body(message, 400, None, "unsupported_endpoint")
        return ProviderError("status", message, status=400, body=body)

    def _failure(self, exc: BaseException) -> ProviderError:
        """litellm's exception as a ProviderError. Its classes alone mislead: a refused connection
        arrives as InternalServerError 500, so the transport's own error is looked for first."""
        exc = getattr(exc, "original_exception", None) or exc  # MidStreamFallbackError wraps the cause
        chain = _chain(exc)
        text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
        message = f"{self.info.name}: {text[:500]}"
        if any(isinstance(e, (self._llm.Timeout, *_TIMED_OUT)) for e in chain):
            return ProviderError("timeout", message)
        if any(isinstance(e, (self._llm.APIConnectionError, *_BROKEN)) for e in chain):
            return ProviderError("connect", message)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status <= 599:
            upstream = _upstream_error(exc, text)
            param, code = (v if isinstance(v, str) else None for v in (upstream.get("param"), upstream.get("code")))
            body = _error_body(str(upstream.get("message") or text), status, param, code)
            return ProviderError("status", message, status=status, body=body, retry_after=_retry_after(exc))
        return ProviderError("protocol", message)


class ChunkStream:
    """litellm's chunks as OpenAI ``chat.completion.chunk`` JSON payloads; the usage arrives as a
    chunk of its own with no choices. Deadlines: the first chunk, each next one, and the whole."""

    def __init__(
        self,
        chunks: Any,
        failure: Callable[[BaseException], ProviderError],
        backend: str,
        *,
        first_due: float,
        idle: float,
        end: float,
    ) -> None:
        self.headers: dict[str, str] = {}
        self._chunks = chunks
        self._failure = failure
        self._backend = backend
        self._due = first_due
        self._idle = idle
        self._end = end
        self._pending: deque[bytes] = deque()
        self._opened: set[int] = set()  # choice indexes whose role was sent

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        await self.fill()
        return self._pending.popleft()

    async def fill(self) -> None:
        """Receive until a payload is ready; StopAsyncIteration at the end of the stream."""
        while not self._pending:
            try:
                async with asyncio.timeout_at(min(self._due, self._end)):
                    chunk = await anext(self._chunks)
            except TimeoutError:
                raise ProviderError("timeout", f"{self._backend}: stream stalled or overran its time") from None
            except StopAsyncIteration:
                raise
            except Exception as exc:
                raise self._failure(exc) from exc
            self._due = asyncio.get_running_loop().time() + self._idle
            try:
                self._pending.extend(_chunk_payloads(chunk.model_dump(), self._opened))
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise ProviderError("protocol", f"{self._backend}: unexpected chunk from litellm: {exc!r}") from exc

    async def aclose(self) -> None:
        await self._chunks.aclose()


# -- normalising to OpenAI's schemas ------------------------------------------------------------


def _chat_completion(raw: Json) -> Json:
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
    if (usage := _usage(raw.get("usage"))) is not None:
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


def _chunk_payloads(raw: Json, opened: set[int]) -> Iterable[bytes]:
    """CreateChatCompletionStreamResponse: the chunk's choices, then its usage as a chunk apart."""
    head = {"id": raw["id"], "object": "chat.completion.chunk", "created": raw["created"], "model": raw["model"]}
    if choices := [_chunk_choice(choice, opened) for choice in raw.get("choices") or []]:
        yield orjson.dumps({**head, "choices": choices})
    if (usage := _usage(raw.get("usage"))) is not None:
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


def _embedding_list(raw: Json, as_base64: bool) -> Json:
    """CreateEmbeddingResponse; base64 is little-endian float32, as OpenAI encodes it."""
    items = sorted(enumerate(raw.get("data") or []), key=lambda pair: pair[1].get("index", pair[0]))
    data = [
        {"object": "embedding", "index": item.get("index", i), "embedding": _vector(item["embedding"], as_base64)}
        for i, item in items
    ]
    usage = raw.get("usage") or {}
    prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    total = usage.get("total_tokens") if isinstance(usage.get("total_tokens"), int) else prompt
    return {
        "object": "list",
        "data": data,
        "model": raw["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": total},
    }


def _vector(values: Any, as_base64: bool) -> Any:
    if as_base64 and isinstance(values, list):
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return values


def _usage(raw: Any) -> Json | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.get("total_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def _finish(reason: Any) -> str | None:
    return None if reason is None else reason if reason in _FINISH else "stop"


def _logprobs(raw: Any) -> Json | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    return {"content": raw["content"], "refusal": raw.get("refusal")}


# -- errors -------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _upstream_error(exc: BaseException, text: str) -> Json:
    """The provider's own ``error`` object, when litellm kept it (as ``body``, or quoted in its message)."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        start, end = text.find("{"), text.rfind("}")
        try:
            body = orjson.loads(text[start : end + 1]) if 0 <= start < end else None
        except orjson.JSONDecodeError:
            body = None
    if not isinstance(body, dict):
        return {}
    error = body.get("error", body)
    return error if isinstance(error, dict) else {"message": error}


def _error_body(message: str, status: int, param: str | None, code: str | None) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", {})
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        with contextlib.suppress(AttributeError, TypeError, ValueError):  # an HTTP date is not worth parsing
            if (value := headers.get(name)) is not None:
                return float(value) * scale
    return None
