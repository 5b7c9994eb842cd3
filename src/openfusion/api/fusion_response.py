"""Render a fusion run's events: as an SSE stream, or as one chat.completion body."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from openfusion.errors import OpenFusionError
from openfusion.pipeline.events import Event, RunFinished, SynthesisChunk, SynthesisMessage
from openfusion.pipeline.progress import describe
from openfusion.protocol import chunk_body, completion_body
from openfusion.sse import DONE, KEEPALIVE, encode, error_chunk

if TYPE_CHECKING:
    from openfusion.api.ledger import Ledger

log = logging.getLogger("openfusion")


async def stream_fusion(
    events: AsyncIterator[Event],
    *,
    generation_id: str,
    model: str,
    progress: bool = True,
    ledger: Ledger | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed fusion response; progress goes out as `delta.reasoning` text.

    The run is driven here, by the response's own task, each event relayed as it comes; the keep-alives while it is
    silent are the response's (`EventStreamResponse(keepalive=KEEPALIVE)`). Leaving early (the client gone) closes
    the run, and with it every upstream call, at once. With a `ledger`, this is also the body's relay that
    `Ledger.closing` would be: a failure, the client leaving or the shutdown are recorded as it records them.
    """
    sse = _SSE(generation_id=generation_id, model=model, progress=progress, ledger=ledger)
    # The ledger's relay (`Ledger.closing`) done here, not by a generator around this one: each answer chunk would
    # cross that level too, ~1.2 k instructions a token.
    with ledger.relay() if ledger is not None else contextlib.nullcontext() as relay:
        try:
            # A first line at once, so clients and proxies see the request is alive: it leaves with the headers and with
            # what the run says in its first step (the panel starting), written in the same loop pass (one system call).
            yield KEEPALIVE
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        if out := sse.render(event):
                            yield out
            except OpenFusionError as exc:
                if ledger is not None:
                    ledger.failed(exc)
                yield encode(error_chunk(exc, generation_id=generation_id, model=sse.model, created=sse.created))
            except Exception as exc:
                if ledger is not None:
                    ledger.failed(exc)
                log.exception("fusion stream failed")
                error = OpenFusionError("Internal server error.", code="internal_error")
                yield encode(error_chunk(error, generation_id=generation_id, model=sse.model, created=sse.created))
            if ledger is not None:
                await ledger.commit()  # clients stop reading at [DONE]: the record goes to the store first
            yield DONE
        except BaseException as exc:
            if relay is None or (end := relay.stopped(exc)) is None:
                raise
            if end:
                yield end  # (the ledger closed as the relay ends)


class _SSE:
    """Renders one run's events as SSE lines; b"" for events the client never sees."""

    def __init__(self, *, generation_id: str, model: str, progress: bool, ledger: Ledger | None) -> None:
        self.generation_id = generation_id
        self.model = model  # the synthesizer's, once it names itself
        self.created = int(time.time())
        self.progress = progress
        self.ledger = ledger
        self.role_sent = False

    def render(self, event: Event) -> bytes:
        if type(event) is SynthesisChunk:  # first: every answer chunk comes this way, and is no progress
            chunk = event.chunk
            self.model = chunk.get("model") or self.model
            chunk["id"] = self.generation_id
            chunk.setdefault("object", "chat.completion.chunk")
            chunk.setdefault("created", self.created)
            chunk.pop("usage", None)  # the summed usage comes in the last chunk
            return encode(chunk)
        if self.progress and (text := describe(event)) is not None:
            delta = {"reasoning": text} if self.role_sent else {"role": "assistant", "reasoning": text}
            self.role_sent = True
            return self._chunk(self.model, [{"index": 0, "delta": delta, "finish_reason": None}])
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
