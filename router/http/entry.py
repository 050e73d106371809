"""THE one entry for inference, whichever server runs the app (fedrouter's own protocol, or an
ASGI server through ``router.http.asgi``).

Two paths that each decided what an inference route is, each with its own shedder and error
mapping, let ``/v1/chat%2Fcompletions`` past the load shedder. So the decision is made here, once,
on the *decoded* path; so are the request ids, the shedder, and what each failure answers.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from urllib.parse import unquote

from router.errors import GatewayError, error_body
from router.http.shedding import LoadShedder
from router.pipeline.answer import JSON_HEADERS, Answer
from router.pipeline.gateway import Gateway
from router.pipeline.responses import Route
from router.pipeline.streaming import frame

log = logging.getLogger("fedrouter")

INFERENCE_ROUTES: dict[str, Route] = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}

_POST = frozenset(("POST", b"POST"))  # an ASGI method, or the parser's

SERVER_ERROR = error_body("The server had an error while processing your request.", "server_error")
SERVER_ERROR_ANSWER = Answer(500, [*JSON_HEADERS, (b"x-should-retry", b"true")], SERVER_ERROR)


class ClientGone(Exception):
    """The client left before its request was read or answered: there is no one to answer."""


def decoded_path(raw: bytes) -> str:
    """A request target's path as routes see it (ASGI's ``path``): percent-decoded."""
    path = raw.decode("latin-1")
    return unquote(path) if "%" in path else path


def inference_route(method: str | bytes, path: str) -> Route | None:
    """The endpoint a request is for if it is an inference call, on its decoded path."""
    if method not in _POST:
        return None
    return INFERENCE_ROUTES.get(path)


def error_answer(err: GatewayError) -> Answer:
    headers = [
        *JSON_HEADERS,
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.response_headers().items()),
    ]
    return Answer(err.status, headers, err.body())


def failure(exc: BaseException, where: str) -> Answer | None:
    """What a request that failed with ``exc`` is answered: its error, a 500 for a fault of ours
    (logged), or None when the client has gone. Never a backend's failure: a local fault is
    never counted against a backend, since only dispatch counts those, and it has none here."""
    if isinstance(exc, GatewayError):
        return error_answer(exc)
    if isinstance(exc, ClientGone):
        return None  # not any ConnectionError: one from our own stores is a fault to answer
    log.error("unhandled error on %s", where, exc_info=exc)
    return SERVER_ERROR_ANSWER


def last_event(exc: BaseException, where: str) -> bytes | None:
    """The one error event that ends a stream already begun when ``exc`` happened."""
    answer = failure(exc, where)
    return None if answer is None else frame(answer.body)


class RequestIds:
    """Request ids: a random per-process prefix and a counter, unique across replicas without a
    system call per request (ids name ledger records; they need not be unguessable)."""

    __slots__ = ("_prefix", "_seq")

    def __init__(self) -> None:
        self._prefix = "req_" + secrets.token_hex(8)
        self._seq = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._seq):08x}"


class Entry:
    """What every path into inference shares: the gateway, the one shedder, the one id source."""

    __slots__ = ("gateway", "ids", "max_body", "shedder", "write_stall_s")

    def __init__(self, gateway: Gateway, max_concurrency: int | None, write_stall_s: float | None) -> None:
        self.gateway = gateway
        self.shedder = LoadShedder(max_concurrency)
        self.ids = RequestIds()
        self.max_body = gateway.max_body_bytes
        self.write_stall_s = write_stall_s
