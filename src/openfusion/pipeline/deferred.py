"""Work a run can do while it waits on an upstream call, instead of on the way to the client.

A run that is about to send a request (the synthesizer's) will have time to spare until the answer comes, and some
of what it must hand over later (its summary's parts, the turn it keeps) is already fixed. `Deferred.schedule()`,
called in the step that sends the request, runs such work a few passes of the event loop later: by then what that
step set going (the request's body, written by a task of aiohttp's own) has gone out, and the run is waiting.
Whoever needs the result first gets it: `result()` does the work at once if the loop has not got to it yet, or if
it was never scheduled. Either way it runs once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("openfusion")

# Passes of the event loop before the work runs: the first runs what the current step scheduled (a request
# body's writer task among them), the second comes after it.
_PASSES = 2


class Deferred(Generic[T]):
    """`work()`, done while the run waits, or on demand, whichever comes first; once."""

    __slots__ = ("_handle", "_left", "_result", "_work")

    def __init__(self, work: Callable[[], T]) -> None:
        self._work: Callable[[], T] | None = work
        self._result: T | None = None
        self._left = 0
        self._handle: asyncio.Handle | None = None

    def schedule(self, passes: int = _PASSES) -> None:
        """Do the work `passes` passes of the event loop from now, unless its result is asked for first."""
        if self._work is None or self._handle is not None:
            return
        self._left = passes
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self._left -= 1
        if self._left > 0:
            self._handle = asyncio.get_running_loop().call_soon(self._tick)
            return
        self._handle = None
        try:
            self.result()
        except Exception:  # left for `result()` to raise where it is needed: work that failed is done again there
            log.exception("deferred work failed; it runs again when its result is needed")

    @property
    def done(self) -> bool:
        """Whether the work has run."""
        return self._work is None

    def result(self) -> T:
        """The work's result, doing the work now if it has not run yet."""
        self.cancel()
        work = self._work
        if work is not None:
            self._result = work()
            self._work = None  # only once it succeeded: a failure raises, and the next call tries again
        return self._result  # type: ignore[return-value]

    def cancel(self) -> None:
        """Do not run the work from the loop (a run that ends first); `result()` still does it on demand."""
        if self._handle is not None:
            self._handle.cancel()  # a cancelled handle lets go of its callback, and with it of this object
            self._handle = None
