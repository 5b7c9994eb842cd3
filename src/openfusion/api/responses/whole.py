"""A whole Responses `response`, answered to a streamed request, told as the stream it would have been.

A provider that speaks the Responses API may still ignore `stream: true` (a local server without streaming, a proxy
that buffers) and answer one `response` object: relayed as it is, the SDKs' stream readers find no event in it
(openai-python's `responses.stream()` insists the first one is `response.created`). It becomes `response.created`
and `response.in_progress` (the response in progress, no output yet), each output item as the API streams one
(`response.output_item.added`, its parts and deltas, `response.output_item.done`), and the terminal event its status
names (`response.completed`, `response.incomplete` or `response.failed`), every event numbered in order. An error
object becomes the `error` event. `ResponseWriter` renders openfusion's own answers from chat chunks, with ids and
items of its own making: a provider's response keeps its own ids, and items of every kind (reasoning with its
encrypted content, a web search call) that no chat chunk carries, so it is told here, item by item, as sent.
"""

from __future__ import annotations

from typing import Any

from openfusion.api.completion_events import whole_error
from openfusion.sse import encode_named
from openfusion.upstream.client import Forwarded

# The event that ends the stream, by the response's status; a response without one is taken as complete.
_TERMINAL = {
    None: "response.completed",
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.failed",
}
# What a response in progress has not got yet.
_NOT_YET = {"output": [], "usage": None, "error": None, "incomplete_details": None}

Told = list[tuple[str, dict[str, Any]]]  # events before they are numbered: their type and their fields


def response_events(response: Any, forwarded: Forwarded) -> bytes:
    """The Responses events of a stream that says what the whole response `response` says."""
    if not isinstance(response, dict):
        raise whole_error(forwarded, "answered a streamed request with JSON that is not a response")
    is_response = response.get("object") == "response" or isinstance(response.get("output"), list)
    if not is_response and isinstance(response.get("error"), dict):  # a 200 that carries an error object
        return encode_named([_error_event(response["error"])])
    status = response.get("status")
    finished = (status is None or isinstance(status, str)) and status in _TERMINAL
    if not is_response or not isinstance(response.get("output"), list) or not finished:
        raise whole_error(forwarded, f"answered a streamed request with JSON that is not a finished response "
                                     f"(status {str(status)[:40]!r})")  # fmt: skip
    pending = {**response, "status": "in_progress", **_NOT_YET}
    if "completed_at" in response:
        pending["completed_at"] = None
    told: Told = [("response.created", {"response": pending}), ("response.in_progress", {"response": pending})]
    for index, item in enumerate(response["output"]):
        if isinstance(item, dict):
            told += _item_events(index, item)
    told.append((_TERMINAL[status], {"response": response}))
    return encode_named([{"type": kind, "sequence_number": number, **fields}
                         for number, (kind, fields) in enumerate(told)])  # fmt: skip


def _item_events(index: int, item: dict[str, Any]) -> Told:
    """One output item as the API streams it: added in progress, its parts and deltas, done as it is."""
    kind, where = item.get("type"), {"item_id": item.get("id", ""), "output_index": index}
    told: Told = []
    if kind == "message":
        added = {**item, "status": "in_progress", "content": []}
        for position, part in enumerate(_list(item.get("content"))):
            told += _part_events({**where, "content_index": position}, part)
    elif kind == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        arguments = _text(item.get("arguments"))
        if arguments:
            told.append(("response.function_call_arguments.delta", {**where, "delta": arguments}))
        told.append(("response.function_call_arguments.done", {**where, "arguments": arguments,
                                                                "name": item.get("name")}))  # fmt: skip
    elif kind == "custom_tool_call":
        added = {**item, "status": "in_progress", "input": ""}
        text = _text(item.get("input"))
        if text:
            told.append(("response.custom_tool_call_input.delta", {**where, "delta": text}))
        told.append(("response.custom_tool_call_input.done", {**where, "input": text}))
    elif kind == "reasoning":
        # Its summary and its text come as parts and deltas; its encrypted content with the item done, as the API's.
        added = {key: value for key, value in item.items() if key != "encrypted_content"} | {"summary": []}
        if "content" in item:
            added["content"] = []
        told += _reasoning_events(where, item)
    else:  # a tool's call (web search, file search, an MCP call...), or a kind newer than these: whole when done
        added = {**item, "status": "in_progress"} if "status" in item else item
    return [
        ("response.output_item.added", {"output_index": index, "item": added}),
        *told,
        ("response.output_item.done", {"output_index": index, "item": item}),
    ]


def _part_events(where: dict[str, Any], part: Any) -> Told:
    """One content part of a message: added empty, its text (or refusal) as one delta, done."""
    if not isinstance(part, dict):
        return []
    told: Told = []
    if part.get("type") == "output_text":
        text, annotations = _text(part.get("text")), _list(part.get("annotations"))
        told.append(("response.content_part.added", {**where, "part": {**part, "text": "", "annotations": []}}))
        if text:
            told.append(("response.output_text.delta", {**where, "delta": text, "logprobs": []}))
        for position, annotation in enumerate(annotations):
            told.append(("response.output_text.annotation.added", {**where, "annotation_index": position,
                                                                   "annotation": annotation}))  # fmt: skip
        logprobs = _list(part.get("logprobs"))
        told.append(("response.output_text.done", {**where, "text": text, "logprobs": logprobs}))
    elif part.get("type") == "refusal":
        refusal = _text(part.get("refusal"))
        told.append(("response.content_part.added", {**where, "part": {**part, "refusal": ""}}))
        if refusal:
            told.append(("response.refusal.delta", {**where, "delta": refusal}))
        told.append(("response.refusal.done", {**where, "refusal": refusal}))
    else:
        told.append(("response.content_part.added", {**where, "part": part}))
    told.append(("response.content_part.done", {**where, "part": part}))
    return told


def _reasoning_events(where: dict[str, Any], item: dict[str, Any]) -> Told:
    """A reasoning item's summary parts and reasoning text, as the API streams them."""
    told: Told = []
    for position, part in enumerate(_list(item.get("summary"))):
        if not isinstance(part, dict):
            continue
        at, text = {**where, "summary_index": position}, _text(part.get("text"))
        told.append(("response.reasoning_summary_part.added", {**at, "part": {**part, "text": ""}}))
        if text:
            told.append(("response.reasoning_summary_text.delta", {**at, "delta": text}))
        told.append(("response.reasoning_summary_text.done", {**at, "text": text}))
        told.append(("response.reasoning_summary_part.done", {**at, "part": part}))
    for position, part in enumerate(_list(item.get("content"))):
        if not isinstance(part, dict) or part.get("type") != "reasoning_text":
            continue
        at, text = {**where, "content_index": position}, _text(part.get("text"))
        if text:
            told.append(("response.reasoning_text.delta", {**at, "delta": text}))
        told.append(("response.reasoning_text.done", {**at, "text": text}))
    return told


def _error_event(error: dict[str, Any]) -> dict[str, Any]:
    """The `error` event for a provider's error object. Its fields as the API reference spells them (`code`,
    `message`, `param`), and the object itself as `error`, as the API sends it: openai-python raises on that one."""
    code, message = error.get("code", error.get("type")), error.get("message")
    return {
        "type": "error",
        "sequence_number": 0,
        "code": str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
        "message": message if isinstance(message, str) and message else "unknown error",
        "param": error.get("param") if isinstance(error.get("param"), str) else None,
        "error": error,
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
