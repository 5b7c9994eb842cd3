"""A pipeline stage's time limit, known to the calls made under it: a call in a stage that ends first sets none.

Every upstream attempt runs within `http.call_timeout_s` (and what is left of `retry.deadline_s`), and every
fusion stage (a panelist, the judge, the synthesizer's first token) within its own limit. With the defaults
(300 s each) the stage's limit, set first, always ends first: the attempt's would never fire, yet each cost a
timer scheduled and cancelled (~5 µs, five per fusion). A stage says here when it ends, and which task it
bounds; an attempt made by that task whose own limit would end later sets none. A shorter `call_timeout_s`
still applies, and so does the attempt's own limit in any other task (one the stage started, which its limit
does not cancel and which may outlive it).
"""

from __future__ import annotations

import asyncio
import weakref
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

# (when the stage ends, its task): the task by weak reference, as a context that names its own task would be a
# reference cycle (a task holds its context).
_Stage = tuple[float, "weakref.ref[asyncio.Task[Any]]"]
_STAGE: ContextVar[_Stage | None] = ContextVar("openfusion_stage", default=None)


class stage_limit:
    """`async with stage_limit(seconds):` is `asyncio.timeout(seconds)`, and tells the calls this task makes
    inside when it ends.

    One object for both, so that no frame keeps the timeout (which holds its task) once the block is left: a
    synthesizer's stream, suspended for minutes after its first token, holds nothing of the limit it had.
    """

    __slots__ = ("_timeout", "_token")

    def __init__(self, seconds: float | None) -> None:
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        ends, task = self._timeout.when(), asyncio.current_task()
        stage = None if ends is None or task is None else (ends, weakref.ref(task))
        self._token: Token[_Stage | None] = _STAGE.set(stage)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        try:
            return await self._timeout.__aexit__(kind, error, traceback)  # the timer cancelled, whatever happens next
        finally:
            _STAGE.reset(self._token)


def stage_ends() -> float | None:
    """When the limit of the stage this task runs in ends (the event loop's clock), or None outside one."""
    stage = _STAGE.get()
    if stage is None or stage[1]() is not asyncio.current_task():
        return None
    return stage[0]
