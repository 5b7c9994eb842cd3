"""When the pipeline stage a call runs in must end: a call inside a stage that ends first sets no time limit of its own.

Every upstream attempt runs within `http.call_timeout_s` (and what is left of `retry.deadline_s`), and every
fusion stage (a panelist, the judge, the synthesizer's first token) within its own limit. With the defaults
(300 s each) the stage's limit, set first, always ends first: the attempt's would never fire, yet each cost a
timer scheduled and cancelled (~5 µs, five per fusion). A stage says when it ends here; an attempt whose own
limit would end later sets none. A shorter `call_timeout_s` still applies.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar, Token
from types import TracebackType

_STAGE_ENDS: ContextVar[float | None] = ContextVar("openfusion_stage_ends", default=None)


class within_stage:
    """Inside `async with asyncio.timeout(...) as limit:`, tells the calls made here when that limit ends.

    The limit's deadline is read once, on entry: a stage does not move its deadline.
    """

    __slots__ = ("_limit", "_token")

    def __init__(self, limit: asyncio.Timeout) -> None:
        self._limit = limit

    def __enter__(self) -> None:
        self._token: Token[float | None] = _STAGE_ENDS.set(self._limit.when())

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _STAGE_ENDS.reset(self._token)


def stage_ends() -> float | None:
    """When the enclosing stage's limit ends (the event loop's clock), or None outside a limited stage."""
    return _STAGE_ENDS.get()
