"""Rate limits of a tenant and of each of its keys: requests and tokens per minute, concurrent streams.

Requests and tokens per minute are GCRA buckets (the generic cell rate algorithm, a token bucket
kept as one number: the *theoretical arrival time*). A limit of L per minute refills one unit
every 60/L seconds and holds at most L, so a full minute's allowance can be spent in a burst.
A request draws its estimated tokens (prompt estimate + max output tokens) at admission; the
difference to its real tokens is given back, or drawn, when it settles.

The answer carries OpenAI's headers: ``x-ratelimit-limit-*`` (the limit), ``-remaining-*`` (what
is left now) and ``-reset-*`` (the time until the bucket is full again, as ``1s``, ``6m0s`` or
``12ms``), for ``requests`` and ``tokens``; a 429 adds ``retry-after`` (whole seconds) and
``retry-after-ms``. Where both the tenant and the key are limited, the tighter one is reported.

This module holds the arithmetic and the in-process state; ``router.tenancy.admission.base`` runs the same
arithmetic in Redis for gateways that share their limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from router.config import RateLimits
from router.errors import RateLimited

WINDOW_S = 60.0
Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One GCRA bucket a request draws on: ``key`` names the tenant or key it belongs to."""

    key: str
    kind: Kind
    limit: int
    cost: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """A bucket after a draw (or a refused draw): what the headers report."""

    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float | None = None  # None when the draw was allowed


def gcra(tat: float, now: float, cost: int, limit: int, window: float = WINDOW_S) -> tuple[float | None, Verdict]:
    """Draw ``cost`` from a bucket whose theoretical arrival time is ``tat``: the new tat (None
    if refused) and the verdict."""
    interval = window / limit
    base = max(tat, now)
    new = base + cost * interval
    if new - now > window + 1e-9:
        remaining = max(0, math.floor((window - (base - now)) / interval + 1e-9))
        return None, Verdict(limit, remaining, base - now, new - now - window)
    return new, Verdict(limit, math.floor((window - (new - now)) / interval + 1e-9), new - now)


def adjust(tat: float, now: float, delta: int, limit: int, window: float = WINDOW_S) -> float:
    """Give back (delta < 0) or draw (delta > 0) tokens after the fact, never below a full bucket."""
    if delta >= 0:
        return max(tat, now) + delta * window / limit
    return max(now, tat + delta * window / limit) if tat > now else tat


def buckets(
    tenant: str, key_id: str, tenant_limits: RateLimits, key_limits: RateLimits | None, tokens: int
) -> list[Bucket]:
    out: list[Bucket] = []
    for scope, limits in ((f"t:{tenant}", tenant_limits), (f"k:{key_id}", key_limits)):
        if limits is None:
            continue
        if limits.requests_per_minute:
            out.append(Bucket(f"{scope}:rpm", "requests", limits.requests_per_minute, 1))
        if limits.tokens_per_minute:
            out.append(Bucket(f"{scope}:tpm", "tokens", limits.tokens_per_minute, tokens))
    return out


def stream_slots(
    tenant: str, key_id: str, tenant_limits: RateLimits, key_limits: RateLimits | None
) -> list[tuple[str, int]]:
    """The concurrency counters a stream holds while it runs: (counter, limit)."""
    out = []
    if tenant_limits.concurrent_streams:
        out.append((f"t:{tenant}:streams", tenant_limits.concurrent_streams))
    if key_limits is not None and key_limits.concurrent_streams:
        out.append((f"k:{key_id}:streams", key_limits.concurrent_streams))
    return out


def too_large(bucket: Bucket) -> RateLimited | None:
    """A request that could never fit its bucket: retrying cannot help."""
    if bucket.cost <= bucket.limit:
        return None
    err = RateLimited(
        f"Request too large: {bucket.cost} tokens requested (prompt estimate + max output tokens), "
        f"above the limit of {bucket.limit} tokens per minute. Reduce the prompt or max_tokens.",
        code="rate_limit_exceeded",
    )
    err.type, err.should_retry = "tokens", False
    return err


def first_refusal(checked: list[tuple[Bucket, Verdict]]) -> RateLimited:
    """The 429 for the first bucket that refused, with the headers of all of them."""
    bucket, verdict = next((b, v) for b, v in checked if v.retry_after_s is not None)
    retry = verdict.retry_after_s or 0.0
    scope = "key" if bucket.key.startswith("k:") else "tenant"
    unit = "requests per min (RPM)" if bucket.kind == "requests" else "tokens per min (TPM)"
    err = RateLimited(
        f"Rate limit reached for this {scope} on {unit}: Limit {bucket.limit}, "
        f"Remaining {verdict.remaining}, Requested {bucket.cost}. Please try again in {duration(retry)}.",
        headers={
            "retry-after": str(max(1, math.ceil(retry))),
            "retry-after-ms": str(max(1, math.ceil(retry * 1000))),
            **headers(checked),
        },
    )
    err.type = bucket.kind
    return err


def concurrency_refused(counter: str, limit: int) -> RateLimited:
    scope = "key" if counter.startswith("k:") else "tenant"
    err = RateLimited(
        f"Too many concurrent streams for this {scope}: the limit is {limit}. Wait for a stream to finish.",
        code="concurrency_limit_exceeded",
        headers={"retry-after": "1", "retry-after-ms": "1000"},
    )
    err.type = "requests"
    return err


def headers(verdicts: list[tuple[Bucket, Verdict]]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, for the tightest bucket of each kind."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        mine = [v for b, v in verdicts if b.kind == kind]
        if not mine:
            continue
        tight = min(mine, key=lambda v: (v.remaining, -v.reset_s))
        out[f"x-ratelimit-limit-{kind}"] = str(tight.limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(tight.remaining)
        out[f"x-ratelimit-reset-{kind}"] = duration(max(v.reset_s for v in mine))
    return out


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's format): ``12ms``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class MemoryLimits:
    """The buckets and stream counters of one process: plain dicts, touched only from the event
    loop, so a check and its commit happen with no await in between and need no lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._streams: dict[str, int] = {}

    def draw(self, wanted: list[Bucket]) -> tuple[list[tuple[Bucket, Verdict]], RateLimited | None]:
        """Draw from every bucket or from none."""
        now = self._clock()
        checked: list[tuple[Bucket, Verdict]] = []
        news: list[float | None] = []
        for bucket in wanted:
            new, verdict = gcra(self._tat.get(bucket.key, now), now, bucket.cost, bucket.limit)
            checked.append((bucket, verdict))
            news.append(new)
        if None in news:
            return checked, first_refusal(checked)
        for (bucket, _), new in zip(checked, news, strict=True):
            self._tat[bucket.key] = new  # type: ignore[assignment]  # not None: a refusal returned above
        return checked, None

    def blocked(self, slots: list[tuple[str, int]]) -> RateLimited | None:
        for counter, limit in slots:
            if self._streams.get(counter, 0) >= limit:
                return concurrency_refused(counter, limit)
        return None

    def correct(self, wanted: list[Bucket], actual_tokens: int) -> None:
        now = self._clock()
        for bucket in wanted:
            if bucket.kind == "tokens" and bucket.key in self._tat:
                self._tat[bucket.key] = adjust(self._tat[bucket.key], now, actual_tokens - bucket.cost, bucket.limit)

    def acquire(self, slots: list[tuple[str, int]]) -> None:
        """Take a slot of each counter; ``blocked`` said there is room, with no await since."""
        for counter, _ in slots:
            self._streams[counter] = self._streams.get(counter, 0) + 1

    def release(self, slots: list[tuple[str, int]]) -> None:
        for counter, _ in slots:
            left = self._streams.get(counter, 0) - 1
            if left > 0:
                self._streams[counter] = left
            else:
                self._streams.pop(counter, None)

    def streams(self, counter: str) -> int:
        return self._streams.get(counter, 0)


__all__ = [
    "WINDOW_S",
    "Bucket",
    "MemoryLimits",
    "Verdict",
    "adjust",
    "buckets",
    "concurrency_refused",
    "duration",
    "first_refusal",
    "gcra",
    "headers",
    "stream_slots",
    "too_large",
]
