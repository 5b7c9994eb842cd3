"""Responses input items as chat messages.

A message item becomes a chat message (a system, developer or assistant message's images and files a user turn
after it), function calls the tool calls of an assistant message, a function call's output a tool message (its
images and files a user turn after that turn's tool messages). Output items that carry nothing a chat model can
read are skipped; every function call must have its output, and every output follow its call.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openfusion.api.responses.content import check_image_details, media_parts, text_of, tool_output, user_content
from openfusion.api.tool_turns import in_chat_order
from openfusion.errors import InvalidRequest, invalid_request_from, invalid_value
from openfusion.protocol import PlainName

# Output items a client may send back as history that carry nothing a chat model can read: skipped.
_SKIPPED_ITEMS = frozenset(
    {
        "reasoning",
        "openrouter:fusion",
        "web_search_call",
        "file_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "compaction",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class _MessageItem(_Strict):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]


class _FunctionCall(_Strict):
    call_id: PlainName = Field(min_length=1)
    name: PlainName = Field(min_length=1)
    arguments: str = ""


class _FunctionCallOutput(_Strict):
    call_id: PlainName = Field(min_length=1)
    output: str | list[dict[str, Any]]


def chat_messages(
    items: list[dict[str, Any]], *, offset: int, instructions: str | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The chat messages for `instructions` and the input `items` (the first `offset` of them stored history), and
    the parameter each came from (`instructions`, `input[2]`, `previous_response_id`)."""
    messages: list[dict[str, Any]] = []
    origins: list[str] = []  # the parameter each chat message came from
    if instructions:
        messages.append({"role": "system", "content": instructions})
        origins.append("instructions")
    tool_media: dict[int, list[dict[str, Any]]] = {}  # a tool message's images and files, by its index
    for position, item in enumerate(items):
        # Errors name the client's own items; stored history was checked when it was sent.
        param = f"input[{position - offset}]" if position >= offset else "previous_response_id"
        if media := _add_item(messages, item, param):
            tool_media[len(messages) - 1] = media
        origins += [param] * (len(messages) - len(origins))
    _check_answered(items, offset)
    if tool_media:
        messages, origins = _with_tool_media(messages, origins, tool_media)
    return in_chat_order(messages, origins)  # a message between a call and its output: after the output


def _validated(model: type[_Strict], item: dict[str, Any], param: str) -> Any:
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        raise invalid_request_from(exc, prefix=param) from None


def _add_item(messages: list[dict[str, Any]], item: Any, param: str) -> list[dict[str, Any]] | None:
    """Append the item's chat messages; a tool output's images and files are returned, for a user turn after it."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"Invalid value for '{param}': an input item must be an object.", param=param)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise InvalidRequest(f"Invalid value for '{param}.type': expected a string.", param=f"{param}.type")
    if kind == "message":
        _add_message(messages, _validated(_MessageItem, item, param), f"{param}.content")
    elif kind == "function_call":
        call = _validated(_FunctionCall, item, param)
        function = {"name": call.name, "arguments": call.arguments}
        tool_call = {"id": call.call_id, "type": "function", "function": function}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # the calls of the message just before
            last.setdefault("tool_calls", []).append(tool_call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
    elif kind == "function_call_output":
        output = _validated(_FunctionCallOutput, item, param)
        if not any(call["id"] == output.call_id for message in messages for call in message.get("tool_calls") or ()):
            # As OpenAI refuses it, and chat providers a tool message that follows no call of its id.
            raise invalid_value(f"{param}.call_id", f"no function call with call_id {output.call_id!r} comes before "
                                                    "this output")  # fmt: skip
        check_image_details(output.output, f"{param}.output")
        content, media = tool_output(output.output, param=f"{param}.output")
        messages.append({"role": "tool", "tool_call_id": output.call_id, "content": content})
        if media:
            label = {"type": "text", "text": f"Images and files from the output of tool call {output.call_id}:"}
            return [label, *media]
    elif kind not in _SKIPPED_ITEMS:
        raise InvalidRequest(f"Invalid value for '{param}.type': input items of type {kind!r} are not supported.",
                             param=f"{param}.type")  # fmt: skip
    return None


def _check_answered(items: list[dict[str, Any]], offset: int) -> None:
    """Each function call has its output (as OpenAI requires, and chat providers of tool calls): named by its own
    item, or by `previous_response_id` for a call of the response continued. (Every output follows its call.)"""
    answered = {item.get("call_id") for item in items if item.get("type") == "function_call_output"}
    for position, item in enumerate(items):
        if item.get("type") == "function_call" and item.get("call_id") not in answered:
            param = f"input[{position - offset}]" if position >= offset else "previous_response_id"
            raise invalid_value(param, f"no function_call_output answers the function call with call_id "
                                       f"{item.get('call_id')!r}")  # fmt: skip


def _add_message(messages: list[dict[str, Any]], message: _MessageItem, param: str) -> None:
    check_image_details(message.content, param)
    role = "system" if message.role == "developer" else message.role
    if role == "user":
        messages.append({"role": role, "content": user_content(message.content, param=param)})
        return
    text = message.content if isinstance(message.content, str) else text_of(message.content)
    media = media_parts(message.content, param=param)
    if text or not media:
        messages.append({"role": role, "content": text})
    if media:  # chat holds images and files in user messages only: they follow, in a user turn of their own
        messages.append({"role": "user", "content": media})


def _with_tool_media(
    messages: list[dict[str, Any]], origins: list[str], media: dict[int, list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with, after each run of tool messages, one user turn holding their outputs' images and files: a
    chat tool message holds text only, and nothing may come between one call's tool message and the next."""
    out: list[dict[str, Any]] = []
    where: list[str] = []
    turn: list[dict[str, Any]] = []
    for index, (message, origin) in enumerate(zip(messages, origins, strict=True)):
        if turn and message["role"] != "tool":
            out.append({"role": "user", "content": turn})
            where.append(where[-1])
            turn = []
        out.append(message)
        where.append(origin)
        turn += media.get(index, [])
    if turn:
        out.append({"role": "user", "content": turn})
        where.append(where[-1])
    return out, where
