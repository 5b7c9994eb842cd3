"""The one exception tree. Each error knows its HTTP status and OpenAI error type; `api.handlers` renders it."""

from __future__ import annotations

from typing import Any


class OpenFusionError(Exception):
    """Base of every error openfusion raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None  # seconds, sent as Retry-After when set
    generation_id: str | None = None  # the activity record of the request it ended, sent as X-Generation-Id
    # The request's body was left unread: the answer says `Connection: close`, or the server would go on reading
    # (and discarding) whatever the client still sends, gigabytes at the client's will, before the next request.
    closes_connection: bool = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def log_message(self) -> str:
        """What the server logs about this error (an error may say more to the operator than to the client)."""
        return self.message

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-format error object (the value of the top-level `error` key)."""
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        metadata = self.metadata()
        if metadata:
            body["metadata"] = metadata
        return body

    def metadata(self) -> dict[str, Any]:
        """Extra machine-readable details (OpenRouter's `error.metadata`)."""
        return {}


class ConfigError(OpenFusionError):
    """The configuration file or a preset is invalid (raised at start-up)."""


class InvalidRequest(OpenFusionError):
    """The client's request is malformed or out of range.

    `reason` is what is wrong with `param` without naming it ("Field required", "Input should be a valid
    integer"), for a surface whose errors name the parameter their own way (Anthropic's `path: reason`); it
    is read from the two forms every message naming a parameter takes (see `invalid_value`, `missing`).
    """

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.reason = _reason(message, param)


def invalid_value(param: str, reason: str) -> InvalidRequest:
    """A 400 for a parameter with a wrong value: "Invalid value for 'param': reason."."""
    return InvalidRequest(f"Invalid value for '{param}': {reason}.", param=param)


def missing(param: str, note: str = "") -> InvalidRequest:
    """A 400 for a required parameter that is absent: "Missing required parameter: 'param'" and a note."""
    return InvalidRequest(f"Missing required parameter: '{param}'{note}.", param=param)


def _reason(message: str, param: str | None) -> str | None:
    if param is None:
        return None
    invalid, absent = f"Invalid value for '{param}': ", f"Missing required parameter: '{param}'"
    if message.startswith(invalid):
        return message[len(invalid) :].removesuffix(".")
    if message.startswith(absent):
        note = message[len(absent) :].removesuffix(".").strip()
        return f"Field required {note}" if note else "Field required"
    return None


class AuthenticationFailed(OpenFusionError):
    """No configured client key: `reason` says which way (`missing`, `malformed`, `unknown`), never anything of it."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, reason: str = "unknown", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.reason = reason


class NotFound(OpenFusionError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """No preset or provider serves the requested model."""

    code = "model_not_found"


class CostLimitExceeded(OpenFusionError):
    """The request's worst-case cost is above its `max_cost` (or cannot be bounded): nothing was spent."""

    status_code = 402
    error_type = "insufficient_quota"
    code = "max_cost_exceeded"


class PayloadTooLarge(OpenFusionError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"
    closes_connection = True  # refused before its body was read to its end


class ServerShuttingDown(OpenFusionError):
    """The server stopped while the request ran: its shutdown grace period (`shutdown_grace_s`) is over."""

    status_code = 503
    code = "server_shutting_down"


class UnsupportedMediaType(OpenFusionError):
    """A request body that is not JSON (`Content-Type: application/json`)."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class CrossSiteRequest(OpenFusionError):
    """A browser request from another site that CORS does not allow."""

    status_code = 403
    error_type = "permission_error"
    code = "cross_site_request"


class GatewayFetch(OpenFusionError):
    """A request made by a gateway's own `web_fetch` (its `Via` mark): a gateway's pages are never research."""

    status_code = 403
    error_type = "permission_error"
    code = "gateway_fetch"


class RequestTimeout(OpenFusionError):
    """The client took too long to send a request's headers or body."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(OpenFusionError):
    """A request's headers are too large or too many."""

    status_code = 431
    error_type = "invalid_request_error"
    code = "request_headers_too_large"


class ServerBusy(OpenFusionError):
    """Every connection the server may hold is busy."""

    status_code = 503
    error_type = "server_error"
    code = "server_busy"
    retry_after = 1.0


class UpstreamError(OpenFusionError):
    """An upstream provider call failed."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"
    cause: str | None = None  # below HTTP, what failed: name_not_resolved, connection_refused, tls_error, …
    sent: bool = True  # False: the request never left this machine (nothing can have been billed)

    def __init__(
        self,
        message: str,
        *,
        model: str,
        provider: str,
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"model": self.model, "provider": self.provider}
        if self.upstream_status is not None:
            meta["upstream_status"] = self.upstream_status
        if self.cause is not None:
            meta["cause"] = self.cause
        return meta


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an HTTP error status (its body and headers kept for pass-through relay)."""

    body: bytes | None = None
    headers: dict[str, str] | None = None


# Upstream refusals that are the client's to fix or to wait out: answered with their own status.
RELAYED_STATUSES = frozenset({400, 404, 413, 422, 429})


def relayed(exc: UpstreamError) -> UpstreamError:
    """A provider's 4xx the client can act on keeps its status (and Retry-After); the rest stay 502/504."""
    if isinstance(exc, UpstreamStatusError) and exc.upstream_status in RELAYED_STATUSES:
        exc.status_code = exc.upstream_status
        exc.error_type = "rate_limit_error" if exc.upstream_status == 429 else "invalid_request_error"
    return exc


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UpstreamConnectionError(UpstreamError):
    code = "upstream_unreachable"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not a valid OpenAI-format response."""

    code = "upstream_invalid_response"


class FusionFailed(OpenFusionError):
    """The fusion run could not produce an answer (e.g. every panelist failed)."""

    status_code = 502
    error_type = "upstream_error"
    code = "all_panels_failed"

    def __init__(self, message: str, *, code: str, failures: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, code=code)
        self.failures = failures or []

    def metadata(self) -> dict[str, Any]:
        return {"failed_models": self.failures} if self.failures else {}


# OpenRouter's stable `error_type` enum, keyed by HTTP status, for `error.metadata.error_type`.
_ERROR_TYPE_BY_STATUS = {
    400: "invalid_request",
    401: "authentication",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    413: "payload_too_large",
    422: "unprocessable",
    429: "rate_limit_exceeded",
    502: "provider_unavailable",
    503: "provider_overloaded",
    504: "timeout",
}


def error_type_for_status(status: int | None) -> str:
    """OpenRouter's `error_type` name for an HTTP status."""
    if status is None:
        return "unmapped"
    return _ERROR_TYPE_BY_STATUS.get(status, "server" if status >= 500 else "unmapped")


def invalid_request_from(exc: Any, *, prefix: str = "") -> InvalidRequest:
    """An InvalidRequest naming the first field a pydantic ValidationError found, without pydantic internals."""
    error = exc.errors()[0]
    param = format_loc(error.get("loc", ()), prefix=prefix)
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if error.get("type") in ("model_type", "dict_type"):  # pydantic names its own class in the first
        message = "Input should be an object"
    if error.get("type") == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param)


# The names pydantic puts in an error's location for the member of a union it tried.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def format_loc(loc: Any, *, prefix: str = "") -> str:
    """A pydantic location as a parameter path: ('plugins', 0, 'model') -> 'plugins[0].model'."""
    path = prefix
    for part in loc:
        if isinstance(part, str) and (part in _UNION_TAGS or "[" in part):
            continue  # which member of `str | list[...]` pydantic tried: not a parameter name
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"
