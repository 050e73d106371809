"""The request pipeline, read top to bottom: authenticate, parse, plan, dispatch, meter, answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import orjson

from policies.base import Scored
from providers.base import Provider, UpstreamResponse
from router.errors import GatewayError, InvalidRequest
from router.fleet.backend_stats import StatsBook
from router.ledger.base import Ledger, Outcome, UsageRecord, done_future
from router.metrics import Metrics
from router.pipeline.answer import JSON_HEADERS, Answer, StreamAnswer
from router.pipeline.dispatch import Attempts, Dispatcher, Job, Opened, upstream_request
from router.pipeline.metering import RequestContext, billed_tokens, build_record, observe
from router.pipeline.overrides import parse as parse_overrides
from router.pipeline.parsed import Parsed, allowed, capped, check, retarget
from router.pipeline.planner import Planner
from router.pipeline.responses import Route, respond
from router.pipeline.streaming import EarlyWrite, StreamRelay, stream_headers
from router.pipeline.tokens import TokenCounter
from router.tenancy.admission.base import Admission, Ticket, demand, needs_output_cap
from router.tenancy.admission.memory import LocalAdmission
from router.tenancy.tenants import Caller, Tenancy, Tenant

# A stream whose backend has no configured total (one added at run time) ends this long after it began.
_DEFAULT_TOTAL_S = 600.0
_RELAY_GRACE_S = 2.0  # beyond timeouts.total, before the edge ends a relay the backend has not ended


class Gateway:
    def __init__(
        self,
        *,
        tenancy: Tenancy,
        planner: Planner,
        dispatcher: Dispatcher,
        stats: StatsBook,
        ledger: Ledger,
        metrics: Metrics,
        tokens: TokenCounter,
        providers: dict[str, Provider],
        stream_usage: frozenset[str],
        max_body_bytes: int,
        admission: Admission | None = None,
        totals: Mapping[str, float] | None = None,
    ) -> None:
        """``totals``: each backend's ``timeouts.total``, which also bounds the relay of its streams."""
        self.tenancy = tenancy
        self.admission = admission or LocalAdmission(ledger)
        self.planner = planner
        self.dispatcher = dispatcher
        self.stats = stats
        self.ledger = ledger
        self.metrics = metrics
        self.tokens = tokens
        self.providers = providers
        self._stream_usage = stream_usage
        self._limit = max_body_bytes
        self._headers = _Headers()
        self._totals = totals or {}

    @property
    def max_body_bytes(self) -> int:
        return self._limit

    async def handle(
        self,
        endpoint: Route,
        authorization: str | None,
        body: bytes,
        request_id: str,
        early: EarlyWrite | None = None,
    ) -> Answer | StreamAnswer:
        """One inference request whose body has been read (within ``max_body_bytes``). With
        ``early``, a stream's head and first event are written through it the moment that event
        is in; the StreamAnswer returned then relays the rest, and an error raised after that is
        the edge's to end the stream with. A Responses request is translated to the chat request
        it stands for and comes back through here as that."""
        if endpoint == "responses":
            return await respond(self, authorization, body, request_id, early)
        received = time.time()
        started = time.perf_counter()
        try:
            tenant = await self.tenancy.authenticate(authorization)
            parsed = check(endpoint, body)
            override = parse_overrides(parsed.payload)
            await self.stats.refresh(parsed.model)  # ejections made by other replicas, at most a few ms old
            plan = self.planner.plan(allowed(tenant, parsed.model), tenant, parsed.shape, override)
            allowed(tenant, plan.model)
            if override is not None or plan.model != parsed.model:
                parsed = retarget(parsed, plan.model)
            ctx = RequestContext(
                request_id, tenant.name, parsed.model, endpoint, parsed.stream, received, started, tenant.key_id, plan
            )
            parsed, ticket = await self._admit(ctx, tenant, parsed, plan.order)
            try:
                if parsed.stream:
                    return await self._stream(ctx, parsed, plan.order, ticket, early)  # the relay settles from here on
                return await self._complete(ctx, parsed, plan.order, ticket)
            except BaseException:
                await self.admission.settle(ticket, None)  # nothing billed (a no-op if settled already)
                raise
        except GatewayError as err:
            if not err.recorded:
                self.metrics.refused(endpoint, _outcome_of(err))
            raise

    async def _admit(
        self, ctx: RequestContext, tenant: Caller, parsed: Parsed, order: list[Scored]
    ) -> tuple[Parsed, Ticket]:
        """Rate limits and the budget reservation; every exit path after this settles the ticket."""
        if needs_output_cap(list(tenant.budgets), ctx.endpoint, parsed.payload):
            parsed = capped(parsed)
        ticket = await self.admission.admit(
            demand(
                request_id=ctx.request_id,
                tenant=tenant.name,
                key_id=tenant.key_id or "",
                limits=tenant.limits,
                key_limits=tenant.key.limits if tenant.key else None,
                budgets=list(tenant.budgets),
                endpoint=ctx.endpoint,
                payload=parsed.payload,
                body_bytes=len(parsed.body),
                prompt_estimate=parsed.shape.input_tokens,
                order=order,
                stream=parsed.stream,
                received=ctx.received_ts,
            )
        )
        return parsed, ticket

    async def _complete(self, ctx: RequestContext, parsed: Parsed, order: list[Scored], ticket: Ticket) -> Answer:
        attempts = Attempts()

        async def call(scored: Scored, provider: Provider) -> UpstreamResponse:
            req = upstream_request(ctx.endpoint, parsed.payload, parsed.body, scored, parsed.model, False)
            return await provider.complete(req)

        try:
            scored, resp = await self.dispatcher.run(self._job(ctx, parsed), order, attempts, call)
        except GatewayError as err:
            await self._unanswered(ctx, parsed, attempts, err)
            raise
        except asyncio.CancelledError:
            self._unanswered(ctx, parsed, attempts, None)  # the client left: nobody waits for the commit
            raise
        self._failed_attempts(ctx, parsed, attempts)
        self._hedge_overhead(ctx, parsed, attempts)
        tokens_in, tokens_out, source = self._usage_of(parsed.payload, resp.data)
        record = build_record(
            ctx, scored, tokens_in, tokens_out, "ok", source, attempts.count, None, attempt=attempts.answered or None
        )
        committed = self.ledger.submit(record)  # the writer thread commits while the rest is done here
        try:
            await self.admission.settle(ticket, record)
            name = scored.candidate.info.name
            self.stats.success(
                name,
                ctx.model,
                _ttft_estimate(record.latency_ms / 1000, tokens_out, scored),
                tokens_out,
                record.latency_ms / 1000,
            )
            self.planner.observe_power(name, resp.headers, still_counted=False)
            observe(self.metrics, record)
            headers = {**self._headers(scored, attempts), **ticket.headers}
            body = resp.body if source == "upstream" else _with_usage(resp.data, record, resp.body)
            answer = Answer(200, [*JSON_HEADERS, *((k.encode(), v.encode()) for k, v in headers.items())], body)
        finally:
            await committed  # durable before the client sees the answer
        return answer

    async def _stream(
        self, ctx: RequestContext, parsed: Parsed, order: list[Scored], ticket: Ticket, early: EarlyWrite | None
    ) -> StreamAnswer:
        attempts = Attempts()

        def make(scored: Scored) -> Any:
            add_usage = scored.candidate.info.name in self._stream_usage
            return upstream_request(ctx.endpoint, parsed.payload, parsed.body, scored, parsed.model, add_usage)

        relay: StreamRelay | None = None
        planned: tuple[Scored | None, int, list[tuple[bytes, bytes]]] = (None, 0, [])

        def prepare(scored: Scored) -> None:
            # While the backend computes its first token: the relay, and the headers it would be
            # answered with, so that the first event only has to be checked and written.
            nonlocal relay, planned
            if relay is None:
                relay = self._relay(ctx, parsed, attempts, ticket)
            planned = scored, attempts.count, stream_headers({**self._headers(scored, attempts), **ticket.headers})

        headers: list[tuple[bytes, bytes]] = []

        def commit(opened: Opened) -> None:
            # Inside dispatch, so that the first event leaves before its bookkeeping unwinds.
            nonlocal relay, headers
            if relay is None:
                relay = self._relay(ctx, parsed, attempts, ticket)
            first = relay.begin(opened)  # an event that is not one fails this attempt, unseen
            scored, count, headers = planned
            if scored is not opened.scored or count != attempts.count:  # a hedge won, or a later attempt
                headers = stream_headers({**self._headers(opened.scored, attempts), **ticket.headers})
            if early is not None:
                early(headers, first or b"")

        try:
            opened = await self.dispatcher.open_stream(self._job(ctx, parsed), order, attempts, make, prepare, commit)
        except BaseException as exc:
            if relay is not None and relay.begun:  # failed after its answer began (a deadline, a shutdown)
                await relay.abandon("cancelled")  # recorded, and counted, there
                if isinstance(exc, GatewayError):
                    exc.recorded = True
            elif isinstance(exc, GatewayError):
                await self._unanswered(ctx, parsed, attempts, exc)
            elif isinstance(exc, asyncio.CancelledError):
                self._unanswered(ctx, parsed, attempts, None)  # the client left before the first event
            raise
        assert relay is not None
        self._failed_attempts(ctx, parsed, attempts)
        self._hedge_overhead(ctx, parsed, attempts)
        self.planner.observe_power(opened.scored.candidate.info.name, opened.stream.headers, still_counted=True)
        # From now, and with a grace: the backend's own deadline (from the attempt's start, checked
        # on a coarse timer) comes first while the client reads, and ends the stream with an error
        # event; this one ends a relay held up by a client that does not read.
        total = self._totals.get(opened.scored.candidate.info.name, _DEFAULT_TOTAL_S)
        deadline = time.perf_counter() + total + _RELAY_GRACE_S
        return StreamAnswer(headers, relay.events(first_written=early is not None), relay.abandon, deadline)

    def _relay(self, ctx: RequestContext, parsed: Parsed, attempts: Attempts, ticket: Ticket) -> StreamRelay:
        return StreamRelay(
            ctx,
            attempts,
            client_usage=parsed.client_usage,
            prompt_tokens=lambda: self.tokens.count_prompt(parsed.payload),
            ledger=self.ledger,
            stats=self.stats,
            metrics=self.metrics,
            tokens=self.tokens,
            release=lambda name: self.dispatcher.stream_done(name, ctx.model),
            settle=lambda record: self.admission.settle(ticket, record),
        )

    def _job(self, ctx: RequestContext, parsed: Parsed) -> Job:
        return Job(ctx.model, parsed.stream, parsed.shape.max_output_tokens, self.dispatcher.hedger.applies(ctx.tenant))

    def _unanswered(
        self, ctx: RequestContext, parsed: Parsed, attempts: Attempts, err: GatewayError | None
    ) -> asyncio.Future[None]:
        """A request that reached a backend and got no answer still has its one event: its last
        attempt's, unbilled. ``err`` None: the client left while it was in flight. The future
        resolves once the event is durable: an error answer awaits it, as a success does its record,
        so that a client that saw the error can find its event."""
        if attempts.last is None or isinstance(err, InvalidRequest):
            return done_future()  # no backend reached: the request was refused before it was sent
        scored, number = attempts.last
        how = next((k for _, n, k in attempts.failed if n == number), "cancelled")
        if how == "local":  # our own shortage stopped that attempt before it reached its backend
            reached = [(s, n, k) for s, n, k in attempts.failed if k != "local"]
            if not reached:  # no backend was reached at all: refused, and counted as such, at the edge
                return done_future()
            scored, number, how = reached[-1]
        outcome: Outcome = "client_disconnected" if err is None else _outcome_of(err)
        prompt = self.tokens.count_prompt(parsed.payload) if how in _CONSUMED else 0
        record = build_record(
            ctx, scored, prompt, 0, outcome, "counted", attempts.count, None, attempt=number, billed=False
        )
        committed = self.ledger.submit(record)
        observe(self.metrics, record)
        self._failed_attempts(ctx, parsed, attempts, skip=number)
        if err is not None:
            err.recorded = True
        return committed

    def _failed_attempts(self, ctx: RequestContext, parsed: Parsed, attempts: Attempts, skip: int = 0) -> None:
        """Failed attempts that consumed the backend's work (it timed out on the request, or
        answered something that was not an answer) are kept as unbilled ``retry`` events."""
        prompt: int | None = None
        for scored, number, how in attempts.failed:
            if number != skip and how in _CONSUMED:
                if prompt is None:
                    prompt = self.tokens.count_prompt(parsed.payload)
                self.ledger.submit(
                    build_record(
                        ctx,
                        scored,
                        prompt,
                        0,
                        "upstream_error",
                        "counted",
                        attempts.count,
                        None,
                        attempt=number,
                        kind="retry",
                        billed=False,
                    )
                )

    def _hedge_overhead(self, ctx: RequestContext, parsed: Parsed, attempts: Attempts) -> None:
        """A hedged attempt that lost still read the prompt: recorded as overhead, not billed."""
        for scored, number in attempts.hedged:
            self.ledger.submit(
                build_record(
                    ctx,
                    scored,
                    self.tokens.count_prompt(parsed.payload),
                    0,
                    "cancelled",
                    "counted",
                    attempts.count,
                    None,
                    attempt=number,
                    kind="hedge",
                    billed=False,
                )
            )

    def _usage_of(self, payload: dict[str, Any], data: dict[str, Any]) -> tuple[int, int, str]:
        """Tokens in and out: the backend's counts where it gives believable ones, else counted."""

        def answer_tokens() -> int:
            text: list[str] = []
            for choice in data.get("choices") or []:
                if isinstance(choice, dict):
                    message = choice.get("message")
                    text.append(str(message.get("content") or "") if isinstance(message, dict) else "")
                    if isinstance(choice.get("text"), str):
                        text.append(choice["text"])
            return self.tokens.count("".join(text))

        return billed_tokens(data.get("usage"), lambda: self.tokens.count_prompt(payload), answer_tokens)

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


# How an attempt that failed had used the backend: it was working on the request.
_CONSUMED = frozenset({"timeout", "protocol", "cancelled"})


def _with_usage(data: dict[str, Any], record: UsageRecord, body: bytes) -> bytes:
    """An answer whose backend gave no believable usage, with the counts it was billed at: OpenAI's
    answers always carry them, and clients read them. The body as it came if it cannot be
    written again (nested past orjson's limit)."""
    usage: dict[str, int] = {"prompt_tokens": record.input_tokens}
    if record.endpoint != "embeddings":
        usage["completion_tokens"] = record.output_tokens
    usage["total_tokens"] = record.input_tokens + record.output_tokens
    try:
        return orjson.dumps({**data, "usage": usage})
    except orjson.JSONEncodeError:
        return body


def _outcome_of(err: GatewayError) -> Outcome:
    return "client_error" if err.status < 500 else "upstream_error"


def _ttft_estimate(latency_s: float, tokens_out: int, scored: Scored) -> float:
    """A non-streamed answer only shows its total time; take off the generation time expected
    from the measured throughput, or keep the total as a pessimistic time to first token."""
    tps = scored.candidate.stats.tokens_per_s
    return max(0.0, latency_s - tokens_out / tps) if tps else latency_s


class _Headers:
    """The ``x-fedrouter-*`` headers of an answer. The score's is one %-format per set of scorer
    names (a policy's), made once, rather than a format and a join per part on every request."""

    def __init__(self) -> None:
        self._formats: dict[tuple[str, ...], str] = {}

    def __call__(self, scored: Scored, attempts: Attempts) -> dict[str, str]:
        parts = scored.parts
        names = tuple(parts)
        fmt = self._formats.get(names)
        if fmt is None:
            if len(self._formats) >= 256:  # policies come and go through the admin API
                self._formats.clear()
            fmt = self._formats[names] = "%.3f;" + ",".join(f"{name}=%.3f" for name in names)
        info = scored.candidate.info
        return {
            "x-fedrouter-backend": info.name,
            "x-fedrouter-backend-class": info.backend_class,
            "x-fedrouter-score": fmt % (scored.score, *parts.values()),
            "x-fedrouter-attempts": str(attempts.count),
        }


__all__ = ["Gateway", "Tenant"]
