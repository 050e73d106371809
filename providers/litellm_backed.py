"""Providers that do not speak OpenAI's API (Anthropic, Gemini, Bedrock, Cohere ...), through litellm.

Requests arrive in OpenAI's shape with ``model`` already the litellm name ("anthropic/claude-...");
answers leave in OpenAI's shape, with nothing of litellm's own in them. litellm is imported when the
first such backend is built, because importing it costs seconds. Its retries are off: retrying and
falling back belong to ``router.pipeline.dispatch``.
"""

from __future__ import annotations

import asyncio
import os
import struct
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

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
from providers.litellm_errors import Limit, error_body, failure, timeout_message
from providers.litellm_shapes import answer_usage, chat_completion, chunk_payloads, embedding_list

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


def _import_litellm() -> Any:
    """litellm, told never to fetch anything on its own (price map, Anthropic beta headers,
    tokenizers) and not to print advice on stdout."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    import litellm

    litellm.suppress_debug_info = True
    # Counts of the wrong type ("3", true) from a backend reach pydantic models that declare integers,
    # and pydantic warns as litellm and this adapter dump them, quoting the backend's value: a line on
    # stderr that any backend can write (and, where warnings are errors, a failed answer). The counts
    # are passed on as sent for the gateway to judge; the warning tells the operator nothing.
    warnings.filterwarnings("ignore", "Pydantic serializer warnings", UserWarning, "pydantic")
    if hasattr(litellm, "telemetry"):  # a flag of older releases
        litellm.telemetry = False
    return litellm


class _Answer:
    """The upstream's own answer, as litellm received it and before litellm rebuilt it: litellm hands
    it, as ``original_response``, to the ``logger_fn`` of the call (its per-call logging hook). The
    rebuilt answer has lost what the usage and error checks need: whether a usage was sent, its
    counts' types, an error carried by a 200."""

    def __init__(self) -> None:
        self.body: Json | None = None

    def __call__(self, details: Json) -> None:
        if details.get("log_event_type") != "post_api_call":
            return
        raw = details.get("original_response")
        try:
            body = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except orjson.JSONDecodeError:
            body = None
        self.body = body if isinstance(body, dict) else None

    def error(self, backend: str) -> ProviderError | None:
        """A 200 that carries an error is the backend's failure (another may answer), not the client's."""
        if self.body is None or "error" not in self.body:
            return None
        return ProviderError("protocol", f"{backend}: answered 200 with an error instead of a result")


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
        # reduces it to the total on the others; its embedding routes take a number only. Its read
        # timeout is per read: the whole call is bounded here, by ``total``.
        self._timeouts = {
            "chat_completion": httpx.Timeout(timeouts.total, connect=timeouts.connect),
            "embeddings": timeouts.total,
        }
        self._limits = timeouts

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.endpoint == "embeddings":
            return await self._embed(request.payload)
        if request.endpoint != "chat/completions":
            raise self._unsupported(request.endpoint)
        payload = request.payload
        kwargs = self._kwargs(payload, _CHAT_PARAMS, "chat_completion")
        answer = _Answer()
        call = self._llm.acompletion(
            model=payload["model"], messages=payload.get("messages"), stream=False, logger_fn=answer, **kwargs
        )
        response = await self._within_total(call, answer)
        data = self._normalised(lambda raw: chat_completion(raw, answer_usage(answer.body, raw.get("usage"))), response)
        return UpstreamResponse(body=orjson.dumps(data), data=data)

    async def _embed(self, payload: Json) -> UpstreamResponse:
        kwargs = self._kwargs(payload, _EMBEDDING_PARAMS, "embeddings")
        answer = _Answer()
        # Floats always: not every provider can send base64, so it is encoded here when asked.
        call = self._llm.aembedding(model=payload["model"], input=payload.get("input"), logger_fn=answer, **kwargs)
        response = await self._within_total(call, answer)
        as_base64 = payload.get("encoding_format") == "base64"
        data = self._normalised(lambda raw: embedding_list(raw, as_base64, answer.body), response)
        return UpstreamResponse(body=orjson.dumps(data), data=data)

    async def _within_total(self, call: Coroutine[Any, Any, Any], answer: _Answer) -> Any:
        """litellm's answer, the whole call bounded by ``timeouts.total`` (litellm's own timeout
        bounds each read, so an answer that trickles in would be waited for)."""
        try:
            async with asyncio.timeout(self._limits.total) as deadline:
                response = await call
        except Exception as exc:
            if deadline.expired():
                raise ProviderError("timeout", timeout_message(self.info.name, "total", self._limits)) from None
            raise answer.error(self.info.name) or self._failure(exc) from exc
        if (error := answer.error(self.info.name)) is not None:
            raise error
        return response

    async def stream(self, request: UpstreamRequest) -> ChunkStream:
        if request.endpoint != "chat/completions":
            raise self._unsupported(request.endpoint)
        payload = request.payload
        kwargs = self._kwargs(payload, _CHAT_PARAMS, "chat_completion")
        now = asyncio.get_running_loop().time()
        first_due, end = now + self._limits.first_token, now + self._limits.total
        limit: Limit = "first_token" if first_due <= end else "total"
        try:
            async with asyncio.timeout_at(min(first_due, end)) as deadline:
                chunks = await self._llm.acompletion(
                    model=payload["model"],
                    messages=payload.get("messages"),
                    stream=True,
                    stream_options={"include_usage": True},
                    **kwargs,
                )
        except Exception as exc:
            if deadline.expired():  # no response head at all
                raise ProviderError("timeout", timeout_message(self.info.name, limit, self._limits)) from None
            raise self._failure(exc, streaming=True) from exc
        stream = ChunkStream(chunks, self._failure, self.info.name, self._limits, first_due=first_due, end=end)
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
                    "status", message, status=400, body=error_body(message, 400, missing[0], "unsupported_parameter")
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
        body = error_body(message, 400, None, "unsupported_endpoint")
        return ProviderError("status", message, status=400, body=body)

    def _failure(self, exc: BaseException, *, streaming: bool = False) -> ProviderError:
        return failure(exc, self.info.name, self._llm, self._limits, streaming=streaming)


class ChunkStream:
    """litellm's chunks as OpenAI ``chat.completion.chunk`` JSON payloads; the usage arrives as a
    chunk of its own with no choices. Deadlines: the first chunk, each next one, and the whole.

    litellm closes what the upstream left open: a stream that ends without a finish gets one, and
    one without a usage gets litellm's own count. The chunks litellm received from the upstream,
    which it keeps (``chunks``) as it goes, tell the two apart: a stream of which the upstream sent
    no event is a failure, and a usage it did not send is not reported."""

    def __init__(
        self,
        chunks: Any,
        failure: Callable[..., ProviderError],
        backend: str,
        timeouts: Timeouts,
        *,
        first_due: float,
        end: float,
    ) -> None:
        self.headers: dict[str, str] = {}
        self._chunks = chunks
        self._failure = failure
        self._backend = backend
        self._timeouts = timeouts
        self._due = first_due
        self._end = end
        self._seen = False  # a chunk has come
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
            chunk = await self._next()
            if not self._seen and not self._received(usage=False):
                raise ProviderError("protocol", f"{self._backend}: stream ended before any event")
            self._seen = True
            self._due = asyncio.get_running_loop().time() + self._timeouts.idle
            try:
                raw = chunk.model_dump()
                reported = raw.get("usage") is not None and self._received(usage=True)  # one look, at the end
                self._pending.extend(chunk_payloads(raw, self._opened, reported))
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise ProviderError("protocol", f"{self._backend}: unexpected chunk from litellm: {exc!r}") from exc

    async def _next(self) -> Any:
        try:
            async with asyncio.timeout_at(min(self._due, self._end)) as deadline:
                return await anext(self._chunks)
        except StopAsyncIteration:
            raise
        except Exception as exc:
            if not deadline.expired():
                raise self._failure(exc, streaming=True) from exc
        limit: Limit = "total" if self._due >= self._end else "idle" if self._seen else "first_token"
        raise ProviderError("timeout", timeout_message(self._backend, limit, self._timeouts, streaming=True))

    def _received(self, *, usage: bool) -> bool:
        """Whether litellm received from the upstream a chunk (with a usage, if ``usage``). If its
        record is not where it was (another litellm release), the upstream is taken at litellm's word."""
        received = getattr(self._chunks, "chunks", None)
        if not isinstance(received, list):
            return True
        return any(not usage or _get(chunk, "usage") is not None for chunk in reversed(received))

    async def aclose(self) -> None:
        await self._chunks.aclose()


def _get(chunk: Any, key: str) -> Any:
    get = getattr(chunk, "get", None)
    return get(key) if callable(get) else None
