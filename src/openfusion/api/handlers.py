"""The one place where exceptions become HTTP responses: OpenAI's error format, or a surface's own.

A surface whose clients expect another error shape (Anthropic Messages) declares an `ErrorDialect`
for its paths; every error answered on those paths — from a route, the access middleware, a 404 of
the router — is then written in that shape, with the same headers, and the status the dialect gives
it (its own unless the dialect names another for it: Anthropic's 529 for an overloaded server).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

from openfusion.errors import InvalidRequest, OpenFusionError, invalid_request_from

log = logging.getLogger("openfusion")


def openai_error_body(error: OpenFusionError) -> dict[str, Any]:
    """OpenAI's (and OpenRouter's) error body: `{"error": {message, type, param, code, metadata}}`."""
    return {"error": error.to_body()}


def own_status(error: OpenFusionError) -> int:
    """An error's HTTP status as openfusion gives it (OpenAI's dialect)."""
    return error.status_code


@dataclass(frozen=True)
class ErrorDialect:
    """The error body and status of the routes under some paths (OpenAI's everywhere else)."""

    paths: tuple[str, ...]  # route paths; their sub-paths too
    body: Callable[[OpenFusionError], dict[str, Any]]
    status: Callable[[OpenFusionError], int] = own_status

    def covers(self, path: str) -> bool:
        """Whether a route path is one of this dialect's paths or under one."""
        return any(path == p or path.startswith(p + "/") for p in self.paths)


def error_response(error: OpenFusionError, scope: Scope | None = None) -> Response:
    """Render an openfusion error as JSON in the shape of the request's path (with Retry-After when it has one,
    and X-Generation-Id when the request has an activity record)."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))  # never sooner than asked
    if error.generation_id is not None:
        headers["X-Generation-Id"] = error.generation_id
    if error.closes_connection:
        headers["Connection"] = "close"  # uvicorn closes it once this answer is sent
    dialect = dialect_for(scope)
    return Response(
        orjson.dumps(dialect.body(error)),
        status_code=dialect.status(error),
        media_type="application/json",
        headers=headers,
    )


OPENAI = ErrorDialect(paths=(), body=openai_error_body)
"""OpenAI's (and OpenRouter's) errors: every path no other dialect covers."""


def dialect_for(scope: Scope | None) -> ErrorDialect:
    """The error dialect of a request's path: its surface's, else OpenAI's."""
    app = scope.get("app") if scope is not None else None
    dialects: tuple[ErrorDialect, ...] = getattr(getattr(app, "state", None), "error_dialects", ())
    if dialects and scope is not None:
        return dialect_for_path(route_path(scope), dialects)
    return OPENAI


def dialect_for_path(path: str, dialects: Iterable[ErrorDialect]) -> ErrorDialect:
    """The error dialect of a route path: the first dialect that covers it, else OpenAI's."""
    return next((dialect for dialect in dialects if dialect.covers(path)), OPENAI)


def route_path(scope: Scope) -> str:
    """The path the routes see: without the `root_path` a reverse proxy mounted the app under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


async def _openfusion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenFusionError)
    if exc.status_code >= 500:
        log.warning("request failed: %s", exc.log_message)
    return error_response(exc, request.scope)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request_from(exc), request.scope)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = OpenFusionError(str(exc.detail))
    error.status_code = exc.status_code
    error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    response = error_response(error, request.scope)
    response.headers.update(exc.headers or {})  # e.g. a 405's Allow
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    error = OpenFusionError("Internal server error.", code="internal_error")
    error.generation_id = getattr(exc, "generation_id", None)  # set when the request's record was opened
    return error_response(error, request.scope)


def install(app: FastAPI, *, dialects: Iterable[ErrorDialect] = ()) -> None:
    """Register every exception handler on the app, and the error dialects of its surfaces."""
    app.state.error_dialects = tuple(dialects)
    app.add_exception_handler(OpenFusionError, _openfusion_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


__all__ = ["InvalidRequest", "error_response", "install"]
