"""Ordered attempts across a plan's backends: retries with jittered backoff under a shared retry
budget and an overall deadline, fallback, probes of ejected backends, and hedging. Wraps
providers from the outside; providers know none of this."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from policies.base import Scored
from providers.base import Endpoint, EventStream, Provider, ProviderError, UpstreamRequest
from router.config import RoutingConfig
from router.errors import GatewayError, InvalidRequest, NoBackendAvailable, UpstreamRejected
from router.fleet.backend_stats import StatsBook
from router.metrics import Metrics
from router.pipeline.deadlines import Deadlines
from router.pipeline.hedging import Hedger, Superseded, race

T = TypeVar("T")

# Fields that identify the end user; never sent to an untrusted volunteer node.
_IDENTIFYING = ("user", "safety_identifier", "prompt_cache_key", "metadata")


@dataclass(slots=True)
class Attempts:
    """What happened on the way to an answer, for headers, the ledger and the metrics."""

    count: int = 0
    errors: list[str] = field(default_factory=list)
    answered: int = 0  # the number (1-based) of the attempt whose answer the client gets
    hedged: list[tuple[Scored, int]] = field(default_factory=list)  # hedge losers cancelled, with their number
    # Attempts that failed, with their number and how ("rejected": the request's own 4xx, relayed).
    failed: list[tuple[Scored, int, str]] = field(default_factory=list)
    last: tuple[Scored, int] | None = None  # the attempt begun last


@dataclass(slots=True)  # not frozen: built on every request, and a frozen __init__ costs several times as much
class Job:
    """What dispatch needs to know of the request besides its candidates."""

    model: str
    stream: bool = False
    max_output_tokens: int = 0
    hedge: bool = False  # the tenant's requests may be hedged


@dataclass(slots=True)
class Opened:
    """A stream whose first event has arrived, so the client can be committed to its backend."""

    scored: Scored
    stream: EventStream
    first: bytes
    opened_at: float


class _NoneLeft(Exception):
    """Every candidate still in the rotation is ejected or being probed by another request."""


class _Rotation:
    """The candidates in order, round after round; one that cannot be tried now leaves it."""

    def __init__(self, order: list[Scored]) -> None:
        self.order = list(order)
        self.i = 0
        self.rounds = 0  # completed passes over the candidates

    def peek(self) -> Scored | None:
        return self.order[self.i] if self.order else None

    def advance(self) -> None:
        self.i += 1
        if self.i >= len(self.order):
            self.i, self.rounds = 0, self.rounds + 1

    def drop(self, scored: Scored) -> None:
        at = self.order.index(scored)
        del self.order[at]
        if at < self.i:
            self.i -= 1
        if self.order and self.i >= len(self.order):
            self.i, self.rounds = 0, self.rounds + 1


def dump_object(payload: dict[str, object]) -> bytes:
    """A request the gateway had to change, serialised again. orjson writes at most 254 levels of
    nesting, where it reads 1024: a body nested deeper than that is refused, not failed."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(
            f"The request body could not be forwarded: {exc} (JSON nested more than 254 levels deep).",
            code="nested_too_deeply",
        ) from None


def upstream_request(
    endpoint: Endpoint, payload: dict[str, object], raw: bytes, scored: Scored, model: str, add_stream_usage: bool
) -> UpstreamRequest:
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
        return UpstreamRequest(endpoint, payload, raw)
    body = {k: v for k, v in payload.items() if not (strip and k in _IDENTIFYING)}
    body.update(changes)
    return UpstreamRequest(endpoint, body, dump_object(body))


class Dispatcher:
    def __init__(
        self, providers: Mapping[str, Provider], stats: StatsBook, routing: RoutingConfig, metrics: Metrics
    ) -> None:
        self._providers = providers
        self._stats = stats
        self._routing = routing
        self._metrics = metrics
        self.hedger = Hedger(routing.hedging, stats)
        self._deadlines = Deadlines()

    async def run(
        self,
        job: Job,
        order: list[Scored],
        attempts: Attempts,
        call: Callable[[Scored, Provider], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> tuple[Scored, T]:
        """Try ``call`` on the candidates in order; a candidate's turn comes again (after a
        jittered backoff) only once every other candidate has failed. Retries stop at
        ``max_attempts``, when the retry budget is spent, or at the deadline."""
        r = self._routing
        self._stats.count("requests")
        rotation = _Rotation(order)
        limit = min(r.max_attempts, len(order) * (1 + r.retries_per_backend))
        deadline = time.monotonic() + r.deadline_s
        why: list[str] = []
        try:
            async with self._deadlines.after(r.deadline_s):
                # The first attempt runs outside tenacity, whose bookkeeping costs more than the
                # rest of dispatch; a failure is replayed into it as its first attempt, so the
                # retry, stop and wait rules see exactly what they would have seen.
                try:
                    return await self._attempt(job, rotation, attempts, call, discard, True)
                except ProviderError as exc:
                    if not exc.retryable:
                        raise
                    failed: ProviderError | None = exc
                retrying = AsyncRetrying(  # built only now: most requests never need it
                    stop=lambda state: self._stop(state, attempts, limit, rotation, deadline, why),
                    wait=lambda state: self._wait(state, rotation),
                    retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        if failed is not None:
                            replay, failed = failed, None
                            raise replay
                        return await self._attempt(job, rotation, attempts, call, discard, False)
        except ProviderError as exc:
            if not exc.retryable:
                raise _relay(exc) from None
        except TimeoutError:
            raise GatewayError(
                f"No backend answered within the request deadline ({r.deadline_s:g} s): "
                + "; ".join(attempts.errors or ["still waiting"]),
                status=504,
                code="deadline_exceeded",
                headers={"retry-after": "1"},
            ) from None
        except _NoneLeft:
            why.append("every remaining backend is ejected or being probed")
        reasons = "; ".join(attempts.errors + why)
        raise NoBackendAvailable(
            f"Every backend able to serve this request failed: {reasons}", headers={"retry-after": "1"}
        )

    def _stop(
        self,
        state: RetryCallState,
        attempts: Attempts,
        limit: int,
        rotation: _Rotation,
        deadline: float,
        why: list[str],
    ) -> bool:
        """Whether to give up; a retry that goes ahead is counted against the budget here."""
        if attempts.count >= limit or not rotation.order:
            return True
        if time.monotonic() + (state.upcoming_sleep or 0.0) >= deadline:
            why.append("no time left before the request deadline")
            return True
        budget = self._routing.retry_budget
        allowed = budget.ratio * self._stats.windowed("requests") + budget.min_per_s * budget.window_s
        if self._stats.windowed("retries") + 1 > allowed:
            why.append("retry budget exhausted")
            self._metrics.attempt("-", "budget_exhausted")
            return True
        self._stats.count("retries")
        return False

    def _wait(self, state: RetryCallState, rotation: _Rotation) -> float:
        if rotation.i != 0:
            return 0.0  # the next attempt goes to another backend: no reason to wait
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, ProviderError) and exc.retry_after else 0.0
        r = self._routing
        backoff = min(r.backoff_max, r.backoff_initial * 2 ** (max(rotation.rounds, 1) - 1))
        return min(r.backoff_max, max(retry_after, backoff * (0.5 + _jitter(state))))

    async def _attempt(
        self,
        job: Job,
        rotation: _Rotation,
        attempts: Attempts,
        call: Callable[[Scored, Provider], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]] | None,
        first: bool,
    ) -> tuple[Scored, T]:
        scored, probe = await self._next(job.model, rotation)
        hedge = rotation.peek() if first and job.hedge and not probe else None
        delay = None
        if hedge is not None and hedge is not scored and self._usable(hedge, job.model):
            delay = self.hedger.delay(scored.candidate.info.name, job.model, job.stream, job.max_output_tokens)
        if delay is None or hedge is None:
            n = _number(attempts)
            result = await self._try(job.model, scored, probe, n, attempts, call)
            attempts.answered = n
            return scored, result
        numbers = [_number(attempts), 0]

        def second() -> Awaitable[T]:
            assert hedge is not None
            rotation.advance()
            numbers[1] = _number(attempts)
            return self._try(job.model, hedge, False, numbers[1], attempts, call)

        raced = await race(
            lambda: self._try(job.model, scored, probe, numbers[0], attempts, call),
            second,
            delay,
            self.hedger.take,
            discard,
        )
        both = (scored, hedge)
        if raced.cancelled is not None:
            attempts.hedged.append((both[raced.cancelled], numbers[raced.cancelled]))
        attempts.answered = numbers[raced.winner]
        return both[raced.winner], raced.value

    async def _next(self, model: str, rotation: _Rotation) -> tuple[Scored, bool]:
        """The next candidate that may be tried now, and whether this attempt is its probe."""
        while (scored := rotation.peek()) is not None:
            name = scored.candidate.info.name
            if self._stats.ejected(name, model):  # since planning, by this or another replica
                rotation.drop(scored)
            elif self._stats.half_open(name, model):
                if await self._stats.claim_probe(name, model):
                    rotation.advance()
                    return scored, True
                rotation.drop(scored)  # another request is probing it: go elsewhere
            else:
                rotation.advance()
                return scored, False
        raise _NoneLeft

    def _usable(self, scored: Scored, model: str) -> bool:
        name = scored.candidate.info.name
        return not (self._stats.ejected(name, model) or self._stats.half_open(name, model))

    async def _try(
        self,
        model: str,
        scored: Scored,
        probe: bool,
        number: int,
        attempts: Attempts,
        call: Callable[[Scored, Provider], Awaitable[T]],
    ) -> T:
        name = scored.candidate.info.name
        self._stats.started(name, model)
        attempts.last = scored, number
        try:
            result = await call(scored, self._providers[name])
        except ProviderError as exc:
            attempts.errors.append(exc.message)
            attempts.failed.append((scored, number, exc.kind if exc.retryable else "rejected"))
            self._metrics.attempt(name, exc.kind if exc.retryable else "rejected")
            if exc.retryable and exc.kind != "local":
                await self._stats.failure(name, model, probe=probe)
            else:  # the request's own fault, or the gateway's own shortage, says nothing of the backend
                self._stats.released(name, model, probe=probe)
            raise
        except BaseException:  # cancelled: a hedge lost, the deadline passed or the client left
            self._metrics.attempt(name, "cancelled")
            self._stats.released(name, model, probe=probe)
            raise
        finally:
            self._stats.finished(name, model)
        self._stats.answered(name, model, probe=probe)
        self._metrics.attempt(name, "ok")
        return result

    async def open_stream(
        self,
        job: Job,
        order: list[Scored],
        attempts: Attempts,
        make: Callable[[Scored], UpstreamRequest],
        prepare: Callable[[Scored], None] | None = None,
        commit: Callable[[Opened], None] | None = None,
    ) -> Opened:
        """Open a stream and wait for its first event; until then, a failure falls back unseen.
        ``prepare`` is called once a backend's answer has begun (its first event may be long in
        coming), for work that would otherwise delay the first byte to the client.

        ``commit`` is called with the stream of the attempt that answers, once, as soon as its
        first event is in and before dispatch unwinds, so that the event can leave at once. It
        may refuse the event by raising ``ProviderError``: that attempt then fails like any other.
        From ``commit`` on the stream is the caller's, in flight until ``stream_done``, even if
        dispatch fails after it (a deadline passing while a losing hedge is stopped, say)."""
        answered: list[Opened] = []

        async def call(scored: Scored, provider: Provider) -> Opened:
            name = provider.info.name
            stream = await provider.stream(make(scored))
            try:
                if prepare is not None:
                    prepare(scored)
                first = await anext(aiter(stream))
                if first.startswith(b'{"error"'):
                    raise ProviderError("status", f"{name}: stream began with an error", status=502, body=first)
                if answered:
                    raise Superseded  # the hedge of this attempt, or this of its hedge, answered first
                opened = Opened(scored, stream, first, time.perf_counter())
                if commit is not None:
                    commit(opened)
            except StopAsyncIteration:
                await stream.aclose()
                raise ProviderError("protocol", f"{name}: stream ended before any event") from None
            except BaseException:
                await stream.aclose()
                raise
            answered.append(opened)
            self._stats.started(name, job.model)  # in flight until the relay ends (stream_done)
            return opened

        async def discard(opened: Opened) -> None:
            await opened.stream.aclose()
            self.stream_done(opened.scored.candidate.info.name, job.model)

        _, opened = await self.run(job, order, attempts, call, discard)
        return opened

    def stream_done(self, name: str, model: str) -> None:
        self._stats.finished(name, model)


def _number(attempts: Attempts) -> int:
    attempts.count += 1
    return attempts.count


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
