"""Ordered attempts across a plan's backends: retries with backoff, fallback, and the circuit
breaker's bookkeeping. Wraps providers from the outside; providers know none of this."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from policies.base import Scored
from providers.base import EventStream, Provider, ProviderError, UpstreamRequest
from router.backend_stats import StatsBook
from router.config import RoutingConfig
from router.errors import GatewayError, NoBackendAvailable, UpstreamRejected
from router.metrics import Metrics

T = TypeVar("T")

# Fields that identify the end user; never sent to an untrusted volunteer node.
_IDENTIFYING = ("user", "safety_identifier", "prompt_cache_key", "metadata")


@dataclass(slots=True)
class Attempts:
    """What happened on the way to an answer, for headers, the ledger and the metrics."""

    count: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Opened:
    """A stream whose first event has arrived, so the client can be committed to its backend."""

    scored: Scored
    stream: EventStream
    first: bytes
    opened_at: float


def upstream_request(endpoint: str, payload: dict[str, object], raw: bytes, scored: Scored, model: str,
                     add_stream_usage: bool) -> UpstreamRequest:
    """The body for one backend: the client's bytes as they came unless this backend needs a
    change (another model name, no identifying fields, a usage chunk asked for)."""
    info = scored.candidate.info
    changes: dict[str, object] = {}
    upstream_model = info.models[model]
    if upstream_model != model:
        changes["model"] = upstream_model
    if add_stream_usage:
        opts = payload.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage") is True):
            changes["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    strip = info.backend_class == "volunteer" and any(k in payload for k in _IDENTIFYING)
    if not changes and not strip:
        return UpstreamRequest(endpoint, payload, raw)  # type: ignore[arg-type]
    body = {k: v for k, v in payload.items() if not (strip and k in _IDENTIFYING)}
    body.update(changes)
    return UpstreamRequest(endpoint, body, None)  # type: ignore[arg-type]


class Dispatcher:
    def __init__(self, providers: Mapping[str, Provider], stats: StatsBook, routing: RoutingConfig,
                 metrics: Metrics) -> None:
        self._providers = providers
        self._stats = stats
        self._routing = routing
        self._metrics = metrics

    async def run(self, order: list[Scored], attempts: Attempts,
                  call: Callable[[Scored, Provider], Awaitable[T]]) -> tuple[Scored, T]:
        """Try ``call`` on the candidates in order; a candidate's turn comes again (after a
        jittered backoff) only once every other candidate has failed."""
        n = min(self._routing.max_attempts, len(order) * (1 + self._routing.retries_per_backend))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(n),
            wait=lambda state: self._wait(state, len(order)),
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    scored = order[(attempt.retry_state.attempt_number - 1) % len(order)]
                    return scored, await self._try(scored, attempts, call)
        except ProviderError as exc:
            if not exc.retryable:
                raise _relay(exc) from None
        raise NoBackendAvailable(
            "Every backend able to serve this request failed: " + "; ".join(attempts.errors),
            headers={"retry-after": "1"},
        )

    def _wait(self, state: RetryCallState, candidates: int) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, ProviderError) and exc.retry_after else 0.0
        if state.attempt_number < candidates:
            return 0.0  # the next attempt goes to another backend: no reason to wait
        rounds = state.attempt_number // candidates
        backoff = min(self._routing.backoff_max, self._routing.backoff_initial * 2 ** (rounds - 1))
        return min(self._routing.backoff_max, max(retry_after, backoff * (0.5 + _jitter(state))))

    async def _try(self, scored: Scored, attempts: Attempts,
                   call: Callable[[Scored, Provider], Awaitable[T]]) -> T:
        name = scored.candidate.info.name
        attempts.count += 1
        self._stats.started(name)
        try:
            result = await call(scored, self._providers[name])
        except ProviderError as exc:
            attempts.errors.append(exc.message)
            self._metrics.attempts.labels(name, exc.kind if exc.retryable else "rejected").inc()
            if exc.retryable:
                self._stats.failure(name)
            raise
        finally:
            self._stats.finished(name)
        self._metrics.attempts.labels(name, "ok").inc()
        return result

    async def open_stream(self, order: list[Scored], attempts: Attempts,
                          make: Callable[[Scored], UpstreamRequest]) -> Opened:
        """Open a stream and wait for its first event; until then, a failure falls back unseen."""

        async def call(scored: Scored, provider: Provider) -> Opened:
            stream = await provider.stream(make(scored))
            try:
                first = await anext(aiter(stream))
            except StopAsyncIteration:
                await stream.aclose()
                raise ProviderError("protocol", f"{provider.info.name}: stream ended before any event") from None
            except BaseException:
                await stream.aclose()
                raise
            if first.startswith(b'{"error"'):
                await stream.aclose()
                raise ProviderError("status", f"{provider.info.name}: stream began with an error",
                                    status=502, body=first)
            return Opened(scored, stream, first, time.perf_counter())

        _, opened = await self.run(order, attempts, call)
        self._stats.started(opened.scored.candidate.info.name)  # in flight until the relay ends
        return opened

    def stream_done(self, name: str) -> None:
        self._stats.finished(name)


def _jitter(state: RetryCallState) -> float:
    # Deterministic per request and attempt, yet spread across concurrent requests.
    return (hash((id(state), state.attempt_number)) & 0xFFFF) / 0xFFFF


def _relay(exc: ProviderError) -> GatewayError:
    """A backend's own 4xx, passed on in OpenAI's shape with the backend's message."""
    message = exc.message
    param = code = None
    try:
        err = orjson.loads(exc.body or b"{}").get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            param, code = err.get("param"), err.get("code")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return UpstreamRejected(message, param=param, code=None if code is None else str(code), status=exc.status)
