"""Render a fusion run's events: as an SSE stream with keep-alives, or as one chat.completion body."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from openfusion.errors import OpenFusionError
from openfusion.pipeline.events import Event, RunFinished, SynthesisChunk, SynthesisMessage
from openfusion.pipeline.progress import describe
from openfusion.protocol import chunk_body, completion_body
from openfusion.sse import DONE, KEEPALIVE, encode, error_chunk

if TYPE_CHECKING:
    from openfusion.api.ledger import Ledger

log = logging.getLogger("openfusion")

_END = object()
_FAILED = object()
_KEEPALIVE = object()
_BUFFERED = 64  # events a slow client may leave untaken before the run waits for it


async def with_keepalive(
    events: AsyncIterator[Event], interval: float, *, first_at_once: bool = False
) -> AsyncIterator[list[Event | None]]:
    """Yield the events as they come, and None whenever `interval` seconds pass without one.

    Each yield is a list of everything that arrived since the consumer last took: one event when
    the client keeps up, several when an upstream read carried several chunks or the client fell
    behind — so they can go out in one write. Nothing is ever held back to make a batch.

    `first_at_once`: the first batch is what the run yields in its first step (before it first waits),
    possibly nothing, so a stream's opening line can leave with the run's first events in one write.

    The run is driven by its own task so a slow stage never blocks the keep-alives; leaving early
    (client gone) cancels that task, which closes every upstream call of the run. The keep-alives
    come from one loop timer, and the hand-over is a short list with a future on either side: a
    stream in flight holds one task for its run, not a queue and a ticker task too (~4 KiB less each).
    """
    loop = asyncio.get_running_loop()
    items: list[Any] = []  # at most _BUFFERED events the client has not taken yet
    # The run's failure, raised to the client side from here: a frame holding the error it raises (in a local, or in
    # a list it holds) is a reference cycle with the error's traceback, which keeps both until the collector runs.
    failure: list[Exception] = []
    consumer: asyncio.Future[None] | None = None  # set while the client side waits for an item
    producer: asyncio.Future[None] | None = None  # set while the run waits for room

    def hand_over(item: Any) -> None:
        items.append(item)
        if consumer is not None and not consumer.done():
            consumer.set_result(None)

    def quiet() -> None:
        if not items:  # with events still untaken the client has something to read already
            hand_over(_KEEPALIVE)

    silence = _Silence(loop, interval, quiet)

    async def pump() -> None:
        nonlocal producer
        try:
            async with contextlib.aclosing(events):  # a cancelled run closes its upstream calls now
                async for event in events:
                    silence.last = loop.time()
                    while len(items) >= _BUFFERED:
                        producer = loop.create_future()
                        await producer
                    hand_over(event)
        except Exception as exc:  # handed to the consumer, which renders it
            failure.append(exc)
            hand_over(_FAILED)
        else:
            hand_over(_END)

    task = asyncio.create_task(pump(), name="fusion-run")
    try:
        if first_at_once:
            await asyncio.sleep(0)  # the run's task was scheduled first: it takes its first step now
            if not items:
                yield []
        while True:
            while not items:
                consumer = loop.create_future()
                try:
                    await consumer
                finally:
                    consumer = None
            taken = items[:]
            items.clear()
            if producer is not None and not producer.done():
                producer.set_result(None)
            batch: list[Event | None] = []
            for item in taken:
                if item is _END or item is _FAILED:
                    if batch:
                        yield batch
                    if item is _END:
                        return
                    raise failure.pop()
                batch.append(None if item is _KEEPALIVE else item)
            yield batch
    finally:
        silence.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Silence:
    """Calls `on_quiet` whenever `interval` seconds pass with `last` (the time something was heard) unchanged.

    One loop timer, re-armed as it fires. An object rather than a closure that re-arms itself: such a closure names
    itself, a reference cycle that would keep the request's context (its trace, its calls) until the garbage
    collector found it; a cancelled timer drops its callback, so nothing of this outlives `cancel()`.
    """

    __slots__ = ("_interval", "_loop", "_on_quiet", "_timer", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, on_quiet: Callable[[], None]) -> None:
        self._loop = loop
        self._interval = interval
        self._on_quiet = on_quiet
        self.last = loop.time()
        self._timer = loop.call_at(self.last + interval, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        if now >= self.last + self._interval:
            self.last = now
            self._on_quiet()
        self._timer = self._loop.call_at(self.last + self._interval, self._tick)

    def cancel(self) -> None:
        self._timer.cancel()


async def stream_fusion(
    events: AsyncIterator[Event],
    *,
    generation_id: str,
    model: str,
    keepalive_interval: float,
    progress: bool = True,
    ledger: Ledger | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed fusion response; progress goes out as `delta.reasoning` text.

    Events that are ready together go out in one write (one ASGI message, one system call).
    """
    sse = _SSE(generation_id=generation_id, model=model, progress=progress, ledger=ledger)
    # Headers and a first line at once, so clients and proxies see the request is alive; with them, what
    # the run said in its first step (the panel starting): one write (see EventStreamResponse).
    lead = KEEPALIVE
    try:
        async for batch in with_keepalive(events, keepalive_interval, first_at_once=True):
            out = lead + b"".join([sse.render(event) for event in batch])
            lead = b""
            if out:
                yield out
    except OpenFusionError as exc:
        if ledger is not None:
            ledger.failed(exc)
        yield lead + encode(error_chunk(exc, generation_id=generation_id, model=sse.model, created=sse.created))
    except Exception as exc:
        if ledger is not None:
            ledger.failed(exc)
        log.exception("fusion stream failed")
        error = OpenFusionError("Internal server error.", code="internal_error")
        yield lead + encode(error_chunk(error, generation_id=generation_id, model=sse.model, created=sse.created))
    if ledger is not None:
        await ledger.commit()  # clients stop reading at [DONE]: the record goes to the store first
    yield DONE


class _SSE:
    """Renders one run's events as SSE lines (a keep-alive for None); b"" for events the client never sees."""

    def __init__(self, *, generation_id: str, model: str, progress: bool, ledger: Ledger | None) -> None:
        self.generation_id = generation_id
        self.model = model  # the synthesizer's, once it names itself
        self.created = int(time.time())
        self.progress = progress
        self.ledger = ledger
        self.role_sent = False

    def render(self, event: Event | None) -> bytes:
        if event is None:
            return KEEPALIVE
        if self.progress and (text := describe(event)) is not None:
            delta = {"reasoning": text} if self.role_sent else {"role": "assistant", "reasoning": text}
            self.role_sent = True
            return self._chunk(self.model, [{"index": 0, "delta": delta, "finish_reason": None}])
        if isinstance(event, SynthesisChunk):
            chunk = event.chunk
            self.model = chunk.get("model") or self.model
            chunk["id"] = self.generation_id
            chunk.setdefault("object", "chat.completion.chunk")
            chunk.setdefault("created", self.created)
            chunk.pop("usage", None)  # the summed usage comes in the last chunk
            return encode(chunk)
        if isinstance(event, RunFinished):
            if self.ledger is not None:
                self.ledger.finished(event)
            out = b""
            if event.annotations:  # citations of the streamed answer, known once it is complete
                choice = {"index": 0, "delta": {"annotations": event.annotations}, "finish_reason": None}
                out = self._chunk(event.model, [choice])
            extra = {"usage": usage_body(event), "fusion": event.fusion}
            return out + self._chunk(event.model, [], extra=extra)
        return b""

    def _chunk(self, model: str, choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        body = chunk_body(generation_id=self.generation_id, model=model, created=self.created, choices=choices)
        return encode({**body, **extra} if extra else body)


def usage_body(event: RunFinished) -> dict[str, Any]:
    """The response's `usage`: summed tokens and cost, plus the research counts when there was research."""
    usage = event.usage.render()
    if event.server_tool_use:
        usage["server_tool_use_details"] = event.server_tool_use
    return usage


async def complete_fusion(
    events: AsyncIterator[Event], *, generation_id: str, ledger: Ledger | None = None
) -> dict[str, Any]:
    """The chat.completion body of a non-streamed fusion response."""
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    finish_reason: str | None = None
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, SynthesisMessage):
                message, finish_reason = event.message, event.finish_reason
            elif isinstance(event, RunFinished):
                if ledger is not None:
                    ledger.finished(event, finish_reason=finish_reason)
                body = completion_body(
                    generation_id=generation_id,
                    model=event.model,
                    message=message,
                    finish_reason=finish_reason,
                    usage=event.usage,
                    extra={"fusion": event.fusion},
                )
                body["usage"] = usage_body(event)
                return body
    raise OpenFusionError("The fusion run ended without an answer.", code="internal_error")
