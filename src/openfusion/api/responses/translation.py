"""A Responses request translated into the internal chat request.

Input items become chat messages (function calls and their outputs as tool calls and tool messages, see
`items`), `instructions` a system message, the other fields chat parameters (see `parameters`). Errors found in
the chat request later on are named as the client sent them, through the `ParamNames` kept here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from openfusion.api.params import ParamNames, renamed
from openfusion.api.responses.items import chat_messages
from openfusion.api.responses.parameters import chat_parameters, chat_tool_indexes
from openfusion.api.responses.request import ResponsesRequest, input_items
from openfusion.errors import InvalidRequest, invalid_request_from
from openfusion.protocol import ChatRequest

# Chat parameters under their Responses names (the others are the same in both).
_FIELDS = {"max_completion_tokens": "max_output_tokens", "response_format": "text.format", "messages": "input"}
_TOOL_FIELDS = {".function.name": ".name", ".function.parameters": ".parameters", ".function": ""}


@dataclass
class Translated:
    """A Responses request as the pipeline sees it: the chat request and its body (for a chat provider)."""

    request: ResponsesRequest
    chat: ChatRequest
    body: dict[str, Any]  # the chat-completions body, openfusion's own fields included
    items: list[dict[str, Any]]  # the conversation as input items (history first), for a stored response
    raw: dict[str, Any]  # the body as the client sent it (for a provider that speaks the Responses API)
    names: ParamNames  # the client's names for the chat body's parameters, for errors found in it


def translate(
    request: ResponsesRequest, history: list[dict[str, Any]] | None = None, *, raw: dict[str, Any] | None = None
) -> Translated:
    """The internal chat request for a Responses request, after the stored `history` items if any."""
    own = input_items(request)
    items = [*(history or []), *own]
    messages, origins = chat_messages(items, offset=len(history or []), instructions=request.instructions)
    if not items:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if not messages:  # only items a chat model cannot read (reasoning, fusion results), and no instructions
        raise InvalidRequest(
            "Invalid value for 'input': no message, function call or function call output to answer.", param="input"
        )
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    body.update(chat_parameters(request))
    names = ParamNames(fields=_FIELDS, messages=origins, tools=chat_tool_indexes(request), tool_fields=_TOOL_FIELDS)
    try:
        chat = ChatRequest.of(body)
    except ValidationError as exc:
        raise renamed(invalid_request_from(exc), names) from None
    return Translated(request=request, chat=chat, body=body, items=items, raw=raw or {}, names=names)
