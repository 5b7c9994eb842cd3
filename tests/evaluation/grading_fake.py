"""A fake upstream whose grader model's reply depends on the request (criterion, answer, format)."""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fakes.upstream import FakeUpstream, Script

_BODY: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_body", default=None)
_TAG = re.compile(r"<(criterion|response)>\n(.*?)\n</\1>", re.DOTALL)

Reply = Callable[[dict[str, Any]], Script]  # the grader request's body -> the grader's reply


def verdict(status: str, explanation: str = "scripted", cost: float | None = None) -> Script:
    """A grader reply that is a valid verdict."""
    return Script(content=json.dumps({"criterion_status": status, "explanation": explanation}), cost=cost)


def grader_fields(body: dict[str, Any]) -> tuple[str, str]:
    """The criterion and the graded response inside a grader request."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    fields = dict(_TAG.findall(user))
    return fields["criterion"], fields["response"]


class GradingUpstream(FakeUpstream):
    """FakeUpstream plus a grader whose reply depends on the request, not on call order.

    Grader calls run concurrently, so a per-model queue of Scripts could hand a verdict to the
    wrong criterion; each request's body is kept in a context variable (one per request task)
    for the script lookup instead.
    """

    def __init__(self, *, grader: str, reply: Reply) -> None:
        super().__init__()
        self.grader = grader
        self.reply = reply

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.json()  # Starlette caches the body, so the parent reads it again
        except ValueError:
            body = None
        token = _BODY.set(body if isinstance(body, dict) else None)
        try:
            return await super()._chat(request)
        finally:
            _BODY.reset(token)

    def _next_script(self, model: str) -> Script:
        body = _BODY.get()
        if model == self.grader and body is not None:
            return self.reply(body)
        return super()._next_script(model)
