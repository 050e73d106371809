"""The one small interface every backend adapter implements, and the facts it describes.

A provider is a transport: it turns one upstream request into one upstream response or one
stream of server-sent events. Retries, fallback, hedging, metering and metrics wrap it from the
outside (``router.pipeline.dispatch``); no provider knows about tenants, budgets or other providers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

BackendClass = Literal["datacenter", "volunteer", "sovereign"]
Endpoint = Literal["chat/completions", "completions", "embeddings"]
# "local": the gateway's own shortage (no file descriptor, every allowed connection in use), which
# says nothing of the backend and is never counted against it.
FailureKind = Literal["connect", "timeout", "status", "protocol", "local"]
# 4xx statuses that say nothing of the request: another backend may well serve it.
_BACKENDS_FAULT = frozenset({401, 403, 404, 408, 409, 429})


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What the router knows about a backend before measuring it."""

    name: str
    backend_class: BackendClass
    type: str
    models: dict[str, str]  # public model name -> the backend's own name for it
    zone: str | None = None
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # public model -> USD per 1M in/out
    joules_per_token: float | None = None  # declared; measurement replaces it
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long one attempt at a backend may take, in seconds: to connect, to its first event (a
    stream's) or its headers, between two events, and in all. The defaults live here only: the
    config's ``timeouts`` block and every provider take theirs from this."""

    connect: float = 5.0
    first_token: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one backend's answers may make the gateway hold: an untrusted node controls every byte
    it sends, so sizes and counts are bounded as well as time. Defaults live here only."""

    max_response_bytes: int = 16 << 20  # a whole answer, after decompression
    max_event_bytes: int = 1 << 20  # one server-sent event of a stream (so also one line)
    max_connections: int = 256  # open to this backend at once; beyond, requests wait for one


DEFAULT_TIMEOUTS = Timeouts()  # frozen: the defaults' one home, shared
DEFAULT_LIMITS = Limits()


@dataclass(slots=True)  # not frozen: built on every attempt, and a frozen __init__ costs several times as much
class UpstreamRequest:
    """One call to a backend. ``raw`` is the body already serialised, when the gateway had no
    reason to change the client's bytes; adapters that speak JSON send it as is."""

    endpoint: Endpoint
    payload: dict[str, Any]
    raw: bytes | None = None


@dataclass(slots=True)
class UpstreamResponse:
    body: bytes
    data: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class ProviderError(Exception):
    """A backend failed to serve a request.

    ``retryable`` says whether another attempt (here or elsewhere) can help: connection errors,
    timeouts, 429 and 5xx can, and so can the 4xx that are the backend's own trouble (401 and
    403: its credentials; 404: it lacks the model or route); a 4xx caused by the request itself
    cannot, and is relayed.
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        body: bytes | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        if self.kind != "status" or self.status is None:
            return True
        return self.status in _BACKENDS_FAULT or self.status >= 500

    @property
    def client_fault(self) -> bool:
        return not self.retryable


class EventStream(Protocol):
    """An open upstream stream: the ``data`` payload of each server-sent event, in order,
    stopping before ``[DONE]``. ``aclose`` releases the connection and is safe to call twice."""

    headers: dict[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Provider(Protocol):
    info: BackendInfo

    async def complete(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send a non-streaming request; raise ProviderError on any failure."""
        ...

    async def stream(self, request: UpstreamRequest) -> EventStream:
        """Open a stream; raise ProviderError if it cannot be opened (status, connect)."""
        ...

    async def close(self) -> None: ...
