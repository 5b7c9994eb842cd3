"""Pipeline events as Responses API events, and the response object they build.

One `ResponseWriter` per response: `start()` gives `response.created` and `response.in_progress`,
`render(event)` the events for one pipeline event, `fail(error)` the end of a failed response. The
same writer builds the non-streamed body, so both forms always agree. Every event carries `type`
and an increasing `sequence_number`; every item added is also marked done, at its own output index.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from openfusion.api.blocks import Block, BlockDelta, BlockEvent, BlockStarted, BlockStream
from openfusion.api.responses.fusion_item import FusionItem
from openfusion.api.responses.request import ResponsesRequest
from openfusion.errors import OpenFusionError
from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelDelta,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
)
from openfusion.protocol import Usage, token_count

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_PREFIX = {"text": "msg", "refusal": "msg", "reasoning": "rs", "tool_call": "fc"}
_MESSAGE = ("text", "refusal")  # the kinds of block that are an assistant message (its one content part)


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: `resp_…`, `msg_…`, `fc_…`."""
    return f"{prefix}_{secrets.token_hex(24)}"


class ResponseWriter:
    """Renders one response's events and keeps its response object up to date."""

    def __init__(
        self, *, request: ResponsesRequest, model: str, store: bool = False, response_id: str | None = None
    ) -> None:
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        # The fields a response object echoes, not the input: a stream held open for minutes should not keep the
        # client's whole conversation through its writer (a stored response keeps its items apart, see `keep`).
        self.request = request.model_copy(update={"input": None})
        self.model = model
        self.store = store  # whether the response is kept for follow-ups
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []  # by output index; items in progress are updated in place
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: str | None = None
        self.report: dict[str, Any] | None = None  # the fusion run's report
        self._sequence = 0
        self._blocks = BlockStream()
        self._items: dict[int, int] = {}  # block index -> output index
        self._fusion: FusionItem | None = None

    def start(self) -> list[dict[str, Any]]:
        """The first two events: the response exists, and is being worked on."""
        return [
            self._event("response.created", response=self.snapshot()),
            self._event("response.in_progress", response=self.snapshot()),
        ]

    def render(self, event: Event) -> list[dict[str, Any]]:
        """The Responses events for one pipeline event (often none)."""
        fusion = self._fusion
        if isinstance(event, PanelStarted):
            return self._open_fusion(event)
        progress = PanelDelta | PanelistDone | JudgeStarted | JudgeOutcome
        if fusion is not None and not fusion.done and isinstance(event, progress):
            return [self._event(kind, **fields) for kind, fields in fusion.progress(event)]
        if isinstance(event, SynthesisChunk):
            return self._close_fusion() + self._blocks_events(self._blocks.feed(event.chunk))
        if isinstance(event, SynthesisMessage):
            chunk = {"choices": [{"index": 0, "delta": event.message, "finish_reason": event.finish_reason}]}
            return self._close_fusion() + self._blocks_events(self._blocks.feed(chunk))
        if isinstance(event, RunFinished):
            return self._close_fusion() + self._finish(event)
        return []

    def fail(self, error: OpenFusionError) -> list[dict[str, Any]]:
        """The end of a response that failed after it began: open items end incomplete, then `response.failed`."""
        events = self._close_fusion(error)
        events += self._blocks_events(self._blocks.close(), status="incomplete")
        self.status = "failed"
        self.error = {"code": error.code or "server_error", "message": error.message}
        return [*events, self._event("response.failed", response=self.snapshot())]

    @property
    def finished(self) -> bool:
        """Whether the response completed (or ended incomplete): it can be kept for a follow-up."""
        return self.status in ("completed", "incomplete")

    @property
    def finish_reason(self) -> str | None:
        """The chat finish reason of the answer (for the activity record)."""
        return self._blocks.finish_reason

    def snapshot(self) -> dict[str, Any]:
        """The response object as it stands."""
        request = self.request
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "error": self.error,
            "incomplete_details": {"reason": self.incomplete} if self.incomplete else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": self.model,
            "output": [dict(item) for item in self.output] if self.status != "in_progress" else [],
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id,
            "reasoning": {
                "effort": (request.reasoning or {}).get("effort"),
                "summary": (request.reasoning or {}).get("summary"),
            },
            "store": self.store,
            "temperature": request.temperature,
            "text": request.text or {"format": {"type": "text"}},
            "tool_choice": request.tool_choice or "auto",
            "tools": request.tools or [],
            "top_p": request.top_p,
            "truncation": request.truncation or "disabled",
            "usage": self.usage,
            "user": request.user,
            "metadata": request.metadata or {},
        }
        if self.report:
            body["fusion"] = self.report
        return body

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _open_fusion(self, event: PanelStarted) -> list[dict[str, Any]]:
        events = self._blocks_events(self._blocks.close())  # tool mode: the outer model's text so far
        if self._fusion is not None:
            return events
        self._fusion = FusionItem(new_id("st"), len(self.output), event.models)
        self.output.append(self._fusion.item())
        added = self._event("response.output_item.added", output_index=self._fusion.index, item=self._fusion.item())
        return [*events, added, *(self._event(kind, **fields) for kind, fields in self._fusion.started())]

    def _close_fusion(self, error: OpenFusionError | None = None) -> list[dict[str, Any]]:
        fusion = self._fusion
        if fusion is None or fusion.done:
            return []
        events = [self._event(kind, **fields) for kind, fields in fusion.finish(error)]
        self.output[fusion.index] = fusion.item()
        done = self._event("response.output_item.done", output_index=fusion.index, item=fusion.item())
        return [*events, done]

    def _finish(self, event: RunFinished) -> list[dict[str, Any]]:
        self.model = event.slug or self.model  # openfusion's slug, as `response.created` named it in a stream
        self._blocks.annotations.extend(event.annotations)  # a streamed answer's citations come at the end
        self.incomplete = _INCOMPLETE.get(self._blocks.finish_reason or "")
        events = self._blocks_events(self._blocks.close(), status="incomplete" if self.incomplete else "completed")
        self.usage = responses_usage(event.usage, event.server_tool_use)
        self.report = event.fusion or None
        self.status = "incomplete" if self.incomplete else "completed"
        return [*events, self._event(f"response.{self.status}", response=self.snapshot())]

    def _blocks_events(self, events: list[BlockEvent], *, status: str = "completed") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            block = event.block
            if isinstance(event, BlockStarted):
                out += self._item_added(block)
            elif isinstance(event, BlockDelta):
                out.append(self._delta(block, event.delta))
            else:
                out += self._item_done(block, status)
        return out

    def _item_added(self, block: Block) -> list[dict[str, Any]]:
        index = len(self.output)
        self._items[block.index] = index
        item: dict[str, Any] = {"id": new_id(_PREFIX[block.kind])}
        if block.kind in _MESSAGE:
            item.update(type="message", status="in_progress", role="assistant", content=[])
        elif block.kind == "reasoning":
            item.update(type="reasoning", summary=[], content=[])
        else:
            block.call_id = block.call_id or new_id("call")
            item.update(type="function_call", status="in_progress", call_id=block.call_id, name=block.name,
                        arguments="")  # fmt: skip
        self.output.append(item)
        events = [self._event("response.output_item.added", output_index=index, item=dict(item))]
        if block.kind in _MESSAGE:
            part = (
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                if block.kind == "text"
                else {"type": "refusal", "refusal": ""}
            )
            events.append(self._event("response.content_part.added", **self._where(block), content_index=0, part=part))
        return events

    def _where(self, block: Block) -> dict[str, Any]:
        index = self._items[block.index]
        return {"item_id": self.output[index]["id"], "output_index": index}

    def _delta(self, block: Block, delta: str) -> dict[str, Any]:
        if block.kind == "text":
            return self._event("response.output_text.delta", **self._where(block), content_index=0, delta=delta,
                               logprobs=[])  # fmt: skip
        if block.kind == "reasoning":
            return self._event("response.reasoning_text.delta", **self._where(block), content_index=0, delta=delta)
        if block.kind == "refusal":
            return self._event("response.refusal.delta", **self._where(block), content_index=0, delta=delta)
        return self._event("response.function_call_arguments.delta", **self._where(block), delta=delta)

    def _item_done(self, block: Block, status: str) -> list[dict[str, Any]]:
        where, value = self._where(block), block.value()
        item = self.output[where["output_index"]]
        events: list[dict[str, Any]] = []
        if block.kind == "text":
            annotations = [a for a in map(url_citation, self._blocks.annotations) if a is not None]
            for position, annotation in enumerate(annotations):
                events.append(self._event("response.output_text.annotation.added", **where, content_index=0,
                                          annotation_index=position, annotation=annotation))  # fmt: skip
            part = {"type": "output_text", "text": value, "annotations": annotations, "logprobs": []}
            events.append(self._event("response.output_text.done", **where, content_index=0, text=value, logprobs=[]))
            events.append(self._event("response.content_part.done", **where, content_index=0, part=part))
            item.update(status=status, content=[part])
        elif block.kind == "refusal":
            part = {"type": "refusal", "refusal": value}
            events.append(self._event("response.refusal.done", **where, content_index=0, refusal=value))
            events.append(self._event("response.content_part.done", **where, content_index=0, part=part))
            item.update(status=status, content=[part])
        elif block.kind == "reasoning":
            events.append(self._event("response.reasoning_text.done", **where, content_index=0, text=value))
            item.update(content=[{"type": "reasoning_text", "text": value}])
        else:
            item.update(status=status, arguments=value, name=block.name)
            events.append(self._event("response.function_call_arguments.done", **where, arguments=value,
                                      name=block.name))  # fmt: skip
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=dict(item)))
        return events


def url_citation(annotation: dict[str, Any]) -> dict[str, Any] | None:
    """A chat `url_citation` annotation in the Responses shape (flat), or None for other kinds."""
    if annotation.get("type") != "url_citation":
        return None
    citation = annotation.get("url_citation") if isinstance(annotation.get("url_citation"), dict) else annotation
    out: dict[str, Any] = {"type": "url_citation", "url": citation.get("url", ""), "title": citation.get("title", "")}
    for key in ("start_index", "end_index"):
        out[key] = citation.get(key, 0)
    return out


def responses_usage(usage: Usage, server_tool_use: dict[str, int] | None) -> dict[str, Any]:
    """`usage` in the Responses shape: input/output/total tokens with their details (a fusion's summed over its
    calls, as its counts are), and the cost when known."""
    raw = usage.model_extra or {}
    prompt_details, reasoning = raw.get("prompt_tokens_details") or {}, raw.get("completion_tokens_details")
    input_details = {"cached_tokens": token_count(prompt_details, "cached_tokens")}
    if "cache_write_tokens" in prompt_details:  # OpenRouter's count of the tokens written to a cache, when reported
        input_details["cache_write_tokens"] = token_count(prompt_details, "cache_write_tokens")
    body: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": input_details,
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": token_count(reasoning, "reasoning_tokens")},
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.cost is not None:
        body["cost"] = usage.cost
    if server_tool_use:
        body["server_tool_use_details"] = server_tool_use
    return body
