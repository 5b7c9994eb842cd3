"""The fake upstream's answers in the Responses API's and Anthropic Messages' wire formats (`bench/fakeup.py`).

A provider flagged as speaking one of them gets requests on that surface relayed as they are, its answer relayed as it
streams (openfusion's native pass-through): the fake then answers in that format, as OpenAI's and Anthropic's servers
do. A stream is a list with one entry per token, written as the fake writes chat chunks: the first entry carries the
events that open the answer, the last those that close it, so `every-<ms>` spaces the tokens alone.
"""

from __future__ import annotations

from typing import Any

import orjson

# The same counts as the chat answers' usage (`fakeup.USAGE`), in each API's own names.
INPUT_TOKENS, OUTPUT_TOKENS = 40, 8
_ITEM = "msg_fake"


def response_object(model: str, text: str, created: int, *, status: str = "completed") -> dict[str, Any]:
    """A Responses API `response`: when done, one assistant message with the text, and usage."""
    done = status == "completed"
    part = {"type": "output_text", "text": text, "annotations": []}
    message = {"id": _ITEM, "type": "message", "status": status, "role": "assistant", "content": [part]}
    usage = {
        "input_tokens": INPUT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": [message] if done else [],
        "store": False,
        "usage": usage if done else None,
    }


def responses_stream(model: str, tokens: list[str], created: int) -> list[bytes]:
    """A streamed Responses answer, one entry per token (`response.output_text.delta`), as OpenAI's events."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    where = {"item_id": _ITEM, "output_index": 0, "content_index": 0}
    item = {"id": _ITEM, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    opening = (
        event("response.created", response=response_object(model, "", created, status="in_progress"))
        + event("response.output_item.added", output_index=0, item=item)
        + event("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
    )
    entries = [event("response.output_text.delta", **where, delta=token) for token in tokens]
    done = response_object(model, "".join(tokens), created)
    closing = (
        event("response.output_text.done", **where, text="".join(tokens))
        + event("response.content_part.done", **where, part=done["output"][0]["content"][0])
        + event("response.output_item.done", output_index=0, item=done["output"][0])
        + event("response.completed", response=done)
    )
    entries[0] = opening + entries[0]
    entries[-1] += closing
    return entries


def message_object(model: str, text: str) -> dict[str, Any]:
    """An Anthropic Messages `message` with the text, and usage."""
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    }


def messages_stream(model: str, tokens: list[str]) -> list[bytes]:
    """A streamed Messages answer, one entry per token (`content_block_delta`), as Anthropic's events."""

    def event(data: dict[str, Any]) -> bytes:
        return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    started = {**message_object(model, ""), "content": [], "stop_reason": None}
    started["usage"] = {"input_tokens": INPUT_TOKENS, "output_tokens": 1}
    opening = (
        event({"type": "message_start", "message": started})
        + event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        + event({"type": "ping"})
    )
    entries = [
        event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}})
        for token in tokens
    ]
    closing = (
        event({"type": "content_block_stop", "index": 0})
        + event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            }
        )
        + event({"type": "message_stop"})
    )
    entries[0] = opening + entries[0]
    entries[-1] += closing
    return entries
