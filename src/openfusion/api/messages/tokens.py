"""The input token count of a Messages request, estimated (no tokenizer of every provider is at hand).

About four characters a token over the request as JSON (system, messages, tools: their syntax
stands in for the tokens a chat template adds), plus 1,600 tokens per image or PDF (Anthropic's
figure for a large image) instead of its base64 data. Good enough for a client's context
bookkeeping (`/v1/messages/count_tokens`, the input usage a stream starts with); the usage an
answer ends with is the providers' own count.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from openfusion.api.messages.request import MessagesRequest

CHARS_PER_TOKEN = 4
TOKENS_PER_ATTACHMENT = 1600


def estimate_input_tokens(request: MessagesRequest) -> int:
    """The estimated input tokens of a request (at least 1)."""
    attachments = [0]
    parts = {"system": _stripped(request.system, attachments), "messages": _stripped(request.messages, attachments)}
    if request.tools:
        parts["tools"] = request.tools
    size = len(orjson.dumps(parts))
    return max(1, math.ceil(size / CHARS_PER_TOKEN) + attachments[0] * TOKENS_PER_ATTACHMENT)


def _stripped(value: Any, attachments: list[int]) -> Any:
    """`value` with every base64 source's data left out (counted in `attachments` instead)."""
    if isinstance(value, list):
        return [_stripped(item, attachments) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("type") == "base64" and "data" in value:
        attachments[0] += 1
        return {key: item for key, item in value.items() if key != "data"}
    if value.get("type") == "url" and isinstance(value.get("url"), str) and "source" not in value:
        attachments[0] += 1
    return {key: _stripped(item, attachments) for key, item in value.items()}
