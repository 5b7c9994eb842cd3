"""A whole Anthropic message, answered to a streamed request, told as the Messages stream it would have been.

A provider that speaks Messages may still ignore `stream: true` (a local server without streaming, a proxy that
buffers) and answer one `{"type": "message", ...}`: relayed as it is, the SDKs' stream readers find no event in it.
It becomes `message_start` (the message, its content empty, with its usage), each content block as Anthropic streams
one (`content_block_start`, its deltas, `content_block_stop`), `message_delta` (stop reason, stop sequence, usage)
and `message_stop`; an error object becomes the `error` event. `MessageWriter` renders openfusion's own answers from
chat chunks, with ids and blocks of its own making: a provider's message keeps its own, and blocks of every kind
(server tool results, redacted thinking) that no chat chunk carries, so it is told here, block by block, as sent.
"""

from __future__ import annotations

from typing import Any

from openfusion.api.completion_events import whole_error
from openfusion.sse import dumps, encode_named
from openfusion.upstream.client import Forwarded

# Blocks whose input streams as JSON text (`input_json_delta`); any block not named here (a server tool's result,
# redacted thinking, a kind newer than this list) comes whole in its `content_block_start`.
_INPUT_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")


def message_events(message: Any, forwarded: Forwarded) -> bytes:
    """The Messages events of a stream that says what the whole message `message` says."""
    if isinstance(message, dict) and isinstance(message.get("error"), dict):  # a 200 that carries an error object
        return encode_named([_error_event(message["error"])])
    is_message = isinstance(message, dict) and message.get("type") == "message"
    if not is_message or not isinstance(message.get("content"), list):
        raise whole_error(forwarded, "answered a streamed request with JSON that is not a message")
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message["content"]):
        if isinstance(block, dict):
            events += _block_events(index, block)
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    events += [{"type": "message_delta", "delta": delta, "usage": usage}, {"type": "message_stop"}]
    return encode_named(events)


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    """One content block as Anthropic streams it: started empty, filled by its deltas, stopped."""
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        citations = block.get("citations")
        start = {**block, "text": ""}
        if isinstance(citations, list) and citations:  # each citation its own delta, as Anthropic sends them
            start["citations"] = []
            deltas += [{"type": "citations_delta", "citation": citation} for citation in citations]
        if isinstance(block.get("text"), str) and block["text"]:
            deltas.append({"type": "text_delta", "text": block["text"]})
    elif kind == "thinking":
        start = {**block, "thinking": "", "signature": ""}
        if isinstance(block.get("thinking"), str) and block["thinking"]:
            deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
        if isinstance(block.get("signature"), str) and block["signature"]:
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind in _INPUT_BLOCKS:
        start = {**block, "input": {}}
        deltas.append({"type": "input_json_delta", "partial_json": dumps(block.get("input", {})).decode()})
    else:
        start = block
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def _error_event(error: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's `error` event for a provider's error object (its type and message kept, either named if not)."""
    kind, message = error.get("type"), error.get("message")
    told = {
        **error,
        "type": kind if isinstance(kind, str) and kind else "api_error",
        "message": message if isinstance(message, str) and message else "unknown error",
    }
    return {"type": "error", "error": told}
