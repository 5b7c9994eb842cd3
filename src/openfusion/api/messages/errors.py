"""Errors in the Anthropic Messages shape: `{"type": "error", "error": {"type", "message"}}`.

`anthropic_status` is the one mapping from openfusion's exception tree to Anthropic's statuses, and
the `type` follows from the status as Anthropic pairs them. The status is the one openfusion gives the
error, but where Anthropic has its own for what went wrong: 529 `overloaded_error` for a server that
is full or draining and for a provider that said it is overloaded (503 or 529), 429 `rate_limit_error`
for a provider's rate limit (a 502 elsewhere: every panelist refused, or the limit came mid-stream).
A request that is not valid names the parameter as Anthropic does, by its path before the reason
(`messages.0.content.1.type: …`). The same body is the `error` event of a stream that fails after it
began: its type is the one the whole answer's error would have had.
"""

from __future__ import annotations

import re
from typing import Any

from openfusion.api.handlers import ErrorDialect
from openfusion.errors import (
    FusionFailed,
    InvalidRequest,
    OpenFusionError,
    ServerBusy,
    ServerShuttingDown,
    UpstreamError,
)
from openfusion.sse import dumps

# Anthropic's error types by HTTP status (its documented pairs); any other 4xx is a bad request, any other 5xx
# (503 among them: Anthropic documents none) an API error.
_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529
# A provider's statuses that say it is overloaded: Anthropic's 529, and the 503 of OpenAI-compatible ones (OpenRouter's
# `provider_overloaded`).
_UPSTREAM_OVERLOADED = frozenset({503, 529})


def anthropic_status(error: OpenFusionError) -> int:
    """The HTTP status of an openfusion error on /v1/messages (and the type its body and stream event carry)."""
    if isinstance(error, ServerBusy | ServerShuttingDown):  # full, or draining: the retry goes elsewhere, or later
        return OVERLOADED
    if error.status_code >= 500:  # the provider's own word, when it said it is overloaded or rate-limited
        if isinstance(error, UpstreamError) and error.upstream_status in _UPSTREAM_OVERLOADED:
            return OVERLOADED
        if isinstance(error, UpstreamError) and error.upstream_status == 429:
            return 429
        if isinstance(error, FusionFailed) and error.code == "rate_limited":  # every panelist failed, one with 429
            return 429
    return error.status_code


def error_type(error: OpenFusionError) -> str:
    """Anthropic's error type for an openfusion error."""
    status = anthropic_status(error)
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(error: OpenFusionError) -> dict[str, Any]:
    """The Anthropic error object for an openfusion error."""
    return {"type": "error", "error": {"type": error_type(error), "message": _message(error)}}


def anthropic_path(param: str) -> str:
    """A parameter path in Anthropic's notation: 'messages[0].content[1].type' -> 'messages.0.content.1.type'."""
    return _INDEX.sub(r".\1", param)


_INDEX = re.compile(r"\[(\d+)\]")


def _message(error: OpenFusionError) -> str:
    if isinstance(error, InvalidRequest) and error.param not in (None, "body"):
        return f"{anthropic_path(error.param)}: {error.reason or error.message}"
    return error.message


def error_event(error: OpenFusionError) -> bytes:
    """The `error` event that ends a stream which failed after it began."""
    return b"event: error\ndata: " + dumps(error_body(error)) + b"\n\n"


# Every /v1/messages route answers errors in Anthropic's shape, those raised before routing included.
ERRORS = ErrorDialect(paths=("/v1/messages", "/api/v1/messages"), body=error_body, status=anthropic_status)
