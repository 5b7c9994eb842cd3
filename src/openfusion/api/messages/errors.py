"""Errors in the Anthropic Messages shape: `{"type": "error", "error": {"type", "message"}}`.

The HTTP status stays the one openfusion gives the error; the `type` is Anthropic's name for it.
A request that is not valid names the parameter as Anthropic does, by its path before the reason
(`messages.0.content.1.type: …`). The same body is the `error` event of a stream that fails after it began.
"""

from __future__ import annotations

import re
from typing import Any

from openfusion.api.handlers import ErrorDialect
from openfusion.errors import InvalidRequest, OpenFusionError
from openfusion.sse import dumps

# Anthropic's error types by HTTP status; any other 4xx is a bad request, any other 5xx an API error.
_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(error: OpenFusionError) -> dict[str, Any]:
    """The Anthropic error object for an openfusion error."""
    return {"type": "error", "error": {"type": error_type(error.status_code), "message": _message(error)}}


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
ERRORS = ErrorDialect(paths=("/v1/messages", "/api/v1/messages"), body=error_body)
