"""The one place where exceptions become HTTP responses, always in OpenAI's error format."""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from openfusion.errors import InvalidRequest, OpenFusionError, invalid_request_from

log = logging.getLogger("openfusion")


def error_response(error: OpenFusionError) -> Response:
    """Render an openfusion error as an OpenAI-format JSON response (with Retry-After when it has one)."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))  # never sooner than asked
    return Response(
        orjson.dumps({"error": error.to_body()}),
        status_code=error.status_code,
        media_type="application/json",
        headers=headers,
    )


async def _openfusion_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenFusionError)
    if exc.status_code >= 500:
        log.warning("request failed: %s", exc.message)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request_from(exc))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = OpenFusionError(str(exc.detail))
    error.status_code = exc.status_code
    error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    response = error_response(error)
    response.headers.update(exc.headers or {})  # e.g. a 405's Allow
    return response


async def _unexpected_error(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error_response(OpenFusionError("Internal server error.", code="internal_error"))


def install(app: FastAPI) -> None:
    """Register every exception handler on the app."""
    app.add_exception_handler(OpenFusionError, _openfusion_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


__all__ = ["InvalidRequest", "error_response", "install"]
