"""The fake upstream's Responses API (`POST /v1/responses`), for a provider that speaks it natively."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson


def response_object(
    reply_id: str, model: str, text: str, usage: dict[str, Any], *, status: str, store: bool = True
) -> dict[str, Any]:
    """A `response` object with one message (when done) and usage in the Responses shape; `store` as asked. The chat
    usage's cache reads and writes (`prompt_tokens_details`) are its `input_tokens_details`, as OpenAI names them.

    `incomplete`: cut off at `max_output_tokens`, as OpenAI ends such a response (its message incomplete too)."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    input_details = {"cached_tokens": prompt_details.get("cached_tokens", 0)}
    if "cache_write_tokens" in prompt_details:
        input_details["cache_write_tokens"] = prompt_details["cache_write_tokens"]
    output = []
    done = status in ("completed", "incomplete")
    if done:
        part = {"type": "output_text", "text": text, "annotations": []}
        output = [{"id": "msg_fake", "type": "message", "status": status, "role": "assistant", "content": [part]}]
    return {
        "id": reply_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": model,
        "output": output,
        "store": store,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": input_details,
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if done
        else None,
    }


def stream_events(
    reply_id: str,
    model: str,
    text: str,
    usage: dict[str, Any],
    *,
    end_after: int | None = None,
    error: dict[str, Any] | None = None,
    store: bool = True,
    status: str = "completed",
    split_data: bool = False,
) -> Iterator[bytes]:
    """The SSE body of a streamed text answer, event by event; `end_after` deltas: it stops there, cleanly;
    `error`: after the deltas, the provider's own `response.failed` with this error, then a clean end;
    `status` "incomplete": it ends with `response.incomplete` (cut off at `max_output_tokens`); `split_data`: each
    event's JSON on two `data:` lines, cut after its type (SSE joins them with a line feed, whitespace to JSON)."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
        sequence += 1
        if split_data:
            data = data.replace(b',"', b',\ndata: "', 1)
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    started = response_object(reply_id, model, text, usage, status="in_progress", store=store)
    yield event("response.created", response=started)
    item = {"id": "msg_fake", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    yield event("response.output_item.added", output_index=0, item=item)
    where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
    for n, piece in enumerate(re.findall(r"\S+\s*|\s+", text)):
        if n == end_after:
            return
        yield event("response.output_text.delta", **where, delta=piece)
    if error is not None:
        failed = {**response_object(reply_id, model, text, usage, status="failed", store=store), "error": error}
        yield event("response.failed", response=failed)
        return
    done = response_object(reply_id, model, text, usage, status=status, store=store)
    yield event("response.output_text.done", **where, text=text)
    yield event("response.content_part.done", **where, part=done["output"][0]["content"][0])
    yield event("response.output_item.done", output_index=0, item=done["output"][0])
    yield event(f"response.{status}", response=done)
