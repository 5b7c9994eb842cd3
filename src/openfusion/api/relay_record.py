"""What a request's record does while a streamed body relays: its steps, in their one order, for every relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openfusion.api.shutdown import shutting_down
from openfusion.errors import OpenFusionError
from openfusion.sse import DONE, encode, error_chunk

if TYPE_CHECKING:
    from openfusion.api.ledger import Ledger


class RelayRecord:
    """A streamed body's relay as its ledger records it (`Ledger.relay()`), used inside the body's own generator:

        with ledger.relay() as relay:  # its task watched by the shutdown's drain until the relay ends
            try:
                ...  # the relay, `await ledger.commit()` before its last bytes
            except BaseException as exc:
                if (end := relay.stopped(exc)) is None:
                    raise  # recorded as failed, the ledger closed
                if end:
                    yield end  # the shutdown stopped it: its error, for the client

    A plain object, not a generator around the body: that would be a level each relayed chunk crosses, ~1.2 k
    instructions (bench/OPTIMISATIONS.md, 42.).
    """

    __slots__ = ("_ledger", "_stopped", "_task")

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._task: asyncio.Task[Any] | None = None  # the one relaying the body
        self._stopped = False  # by the shutdown: the ledger is closed as the relay ends, its error sent (or not)

    def __enter__(self) -> RelayRecord:
        self._task = task = asyncio.current_task()
        if task is not None:
            self._ledger.state.drain.watch(task)
        return self

    def stopped(
        self, exc: BaseException, render_error: Callable[[OpenFusionError], bytes] | None = None
    ) -> bytes | None:
        """The bytes that end a relay `exc` interrupted, if the shutdown's grace period stopped it (b"" if that came
        while its record was being written: the answer is whole); None otherwise, `exc` recorded as the request's
        failure and the ledger closed, for the caller to re-raise.

        The error is a `server_shutting_down` error chunk and `[DONE]`, or what `render_error` makes of it, for a
        surface whose streams end another way: events that follow what the body sent as they are, a body relaying
        whole events only (`sse_events`).
        """
        ledger, task = self._ledger, self._task
        stopped = task is not None and ledger.state.drain.stopped(task)
        if not (isinstance(exc, asyncio.CancelledError) and stopped):
            # Closed where it yielded, its send to a client that reads no more stopped by the grace period's end:
            # stopped by the shutdown, as those told so (that error has no way to its client).
            ledger.failed(shutting_down() if stopped and isinstance(exc, GeneratorExit) else exc)
            ledger.close()
            return None
        assert task is not None
        task.uncancel()  # our own cancellation, now handled: the error goes to the client
        if ledger.closed:
            return b""
        self._stopped = True
        error = shutting_down()
        ledger.failed(error)
        if render_error is not None:
            return render_error(error)
        model = ledger.model or ledger.requested_model
        chunk = error_chunk(error, generation_id=ledger.generation_id, model=model, created=int(time.time()))
        return encode(chunk) + DONE

    def __exit__(self, *exc_info: object) -> None:
        """The relay's end, however it came: a relay the shutdown stopped recorded, its task no longer watched."""
        # Not kept past here: a cancelled task keeps the CancelledError it ended with, whose traceback keeps the
        # body's frame, which keeps this: a cycle that would keep the whole request until a full collection.
        task, self._task = self._task, None
        if self._stopped:
            self._ledger.close()
        if task is not None:
            self._ledger.state.drain.unwatch(task)
