"""The gateway's error hierarchy and its OpenAI-shaped wire form.

    GatewayError                      any error the client sees, with status, type, code, param
      +-- InvalidRequest              400 invalid_request_error (bad JSON, missing field ...)
      |     +-- BodyTooLarge          413
      +-- AuthenticationFailed        401 (missing, unknown or revoked key)
      +-- PermissionDenied            403
      +-- ModelNotFound               404 model_not_found
      +-- RouteNotFound               404 for unknown paths
      +-- RateLimited                 429
      +-- NoBackendAvailable          503 (every candidate failed or none is healthy)
      +-- UpstreamRejected            the backend's own 4xx, relayed to the client as is

Every error serialises to ``{"error": {"message", "type", "param", "code"}}``, the shape the
OpenAI SDKs parse, and says through ``x-should-retry`` whether retrying can help.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    should_retry: bool = True
    recorded: bool = False  # its request has a ledger event (it reached a backend) and was counted

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def response_headers(self) -> dict[str, str]:
        headers = {"x-should-retry": "true" if self.should_retry else "false"}
        headers.update(self.headers)
        return headers


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    should_retry = False


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    should_retry = False


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"
    should_retry = False


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    should_retry = False


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "unknown_url"
    should_retry = False


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class NoBackendAvailable(GatewayError):
    status = 503
    type = "server_error"
    code = "no_backend_available"


class UpstreamRejected(GatewayError):
    """A backend refused the request for a reason of the request's own (a 4xx other than 429)."""

    type = "invalid_request_error"
    should_retry = False


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
