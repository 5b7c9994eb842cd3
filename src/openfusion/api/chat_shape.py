"""The shape of what a fusion request hands to every model it calls: content parts, tool calls, tools, tool_choice,
response_format.

A pass-through request goes to one provider, whose own 400 the client gets. A fusion request goes to the panel,
the judge and the synthesizer: a content part or a tool no model can read would fail every panelist (a 502 for a
mistake of the client's) or, for tools, only the synthesizer, after the panel and the judge were paid for. So a
fusion request is checked first, as OpenAI checks a request, and refused with a 400 naming the field. Part types
openfusion does not know are left to the providers (they differ); the ones it knows must be whole. So must the
tool exchanges, as OpenAI has them: the tool messages answering an assistant message's calls come right after it and,
on the fusion slug, answer every one of them.
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn

from openfusion.errors import InvalidRequest
from openfusion.protocol import ChatRequest

# What each known content part must carry: its field, and that field's own required string fields.
_PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text": ("text", ()),
    "refusal": ("refusal", ()),
    "image_url": ("image_url", ("url",)),
    "input_audio": ("input_audio", ("data", "format")),
    "file": ("file", ()),
}
# An image_url part's `detail`, as OpenAI's chat API takes it (openai-python's ChatCompletionContentPartImageParam).
_IMAGE_DETAILS = ("auto", "low", "high", "original")
_TOOL_CHOICES = ("none", "auto", "required")
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def check_fusion_shape(chat: ChatRequest, *, mode: Literal["slug", "tool"]) -> None:
    """Raise InvalidRequest (400, its `param` the field) for a part, tool call, tool message, tool, tool_choice or
    response_format that no model could take."""
    _check_tool_exchanges(chat, mode=mode)
    for i, tool in enumerate(chat.tools or []):
        _check_tool(tool, f"tools[{i}]")
    if chat.tool_choice is not None:
        _check_tool_choice(chat.tool_choice)
    if chat.response_format is not None:
        _check_response_format(chat.response_format)


def _check_tool_exchanges(chat: ChatRequest, *, mode: Literal["slug", "tool"]) -> None:
    """Each message's shape, and OpenAI's rule for tool exchanges: an assistant message's tool calls are answered by
    the tool messages right after it, one per call, before any other message; a tool message answers a call of the
    assistant message right before its run of tool messages.

    In tool mode the conversation goes first to the caller's own model, whose refusal of a call left unanswered comes
    before any panel is paid for (and reaches the client as its own 400): left to it, as a pass-through leaves it to
    its provider. A tool message answering no call just before it is refused in both modes, as before.
    """
    called: dict[str, int] = {}  # every tool call so far, by id: the index of its message
    current: set[str] = set()  # the calls of the message just before this run of tool messages
    unanswered: dict[str, None] = {}  # those of them no tool message has answered yet (in their order)
    at = -1  # that message's index
    for i, message in enumerate(chat.conversation()):
        _check_message(message, f"messages[{i}]")
        role = message.get("role")
        if role == "tool":
            call_id = message["tool_call_id"]
            if call_id not in current:
                _refuse_misplaced(i, call_id, earlier=call_id in called)
            unanswered.pop(call_id, None)
            continue
        if unanswered and mode == "slug":  # the run of tool messages ends here, the calls not all answered
            _refuse_unanswered(at, unanswered, before=role)
        at, current, unanswered = i, set(), {}
        for call in message.get("tool_calls") or ():
            current.add(call["id"])
            unanswered[call["id"]] = None
            called.setdefault(call["id"], i)
    if unanswered and mode == "slug":
        _refuse_unanswered(at, unanswered, before=None)


def _refuse_misplaced(index: int, call_id: str, *, earlier: bool) -> NoReturn:
    """Refuse a tool message that answers no call of the assistant message just before it (as OpenAI refuses it, and
    every chat provider: only the synthesizer would say so, after the panel)."""
    named = repr(call_id)[:80]
    if not earlier:
        _refuse(f"messages[{index}].tool_call_id", f"{named} answers no tool call before it")
    _refuse(f"messages[{index}].tool_call_id", f"{named} answers a tool call of an earlier assistant message, but "
                                               "another message comes between them: tool messages must follow the "
                                               "assistant message whose calls they answer directly (only other tool "
                                               "messages between them)")  # fmt: skip


def _refuse_unanswered(index: int, unanswered: dict[str, None], *, before: Any) -> NoReturn:
    """Refuse an assistant message with a call no tool message right after it answers (as OpenAI refuses it, and every
    chat provider: on the fusion slug only the synthesizer would say so, after the panel and the judge were paid
    for)."""
    ids = ", ".join(repr(call_id)[:80] for call_id in unanswered)
    where = f"before the {before} message after them" if isinstance(before, str) else "before the conversation ends"
    _refuse(f"messages[{index}].tool_calls", "an assistant message with tool calls must be followed by tool messages "
                                             "answering each of them, directly, before any other message; none "
                                             f"answers {ids} {where}")  # fmt: skip


def _check_message(message: dict[str, Any], at: str) -> None:
    content = message.get("content")
    if isinstance(content, list):
        if not content:
            _refuse(f"{at}.content", "an array of content parts must not be empty")
        for j, part in enumerate(content):
            _check_part(part, f"{at}.content[{j}]")
    if message.get("role") == "tool" and not isinstance(message.get("tool_call_id"), str):
        _refuse(f"{at}.tool_call_id", "a tool message must name the tool call it answers (a string)")
    for j, call in enumerate(message.get("tool_calls") or []):
        where = f"{at}.tool_calls[{j}]"
        if not isinstance(call.get("id"), str):
            _refuse(f"{where}.id", "a tool call must have an id (a string)")
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            _refuse(f"{where}.function.name", "a tool call must name its function (a string)")


def _check_part(part: Any, at: str) -> None:
    if not isinstance(part, dict):
        _refuse(at, "a content part must be an object")
    kind = part.get("type")
    if not isinstance(kind, str):
        _refuse(f"{at}.type", "a content part must have a type (a string)")
    if kind not in _PARTS:
        return
    field, required = _PARTS[kind]
    value = part.get(field)
    if not required:
        if field in ("text", "refusal") and not isinstance(value, str):
            _refuse(f"{at}.{field}", f"a {kind} part must have its {field} (a string)")
        if field == "file" and not isinstance(value, dict):
            _refuse(f"{at}.{field}", "a file part must have its file (an object)")
        return
    if not isinstance(value, dict):
        _refuse(f"{at}.{field}", f"an {kind} part must have its {field} (an object)")
    for name in required:
        if not isinstance(value.get(name), str):
            _refuse(f"{at}.{field}.{name}", f"an {kind} part's {field} must have its {name} (a string)")
    if kind == "image_url" and value.get("detail") is not None and value["detail"] not in _IMAGE_DETAILS:
        _refuse(f"{at}.image_url.detail", f"{value['detail']!r} (expected {', '.join(_IMAGE_DETAILS)})")


def _check_tool(tool: dict[str, Any], at: str) -> None:
    kind = tool.get("type")
    if not isinstance(kind, str):
        _refuse(f"{at}.type", "a tool must have a type (a string)")
    if kind != "function":
        return  # a server tool (openrouter:fusion, openrouter:web_search, ...), its own business
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        _refuse(f"{at}.function.name", "a function tool must name its function (a string)")
    parameters = function.get("parameters")
    if "parameters" in function and not isinstance(parameters, dict):
        _refuse(f"{at}.function.parameters", "a function's parameters must be a JSON schema (an object)")
    if isinstance(parameters, dict) and "type" in parameters and parameters["type"] != "object":  # as OpenAI
        _refuse(f"{at}.function.parameters.type", "a function's parameters are a schema of type 'object'")


def _check_tool_choice(choice: str | dict[str, Any]) -> None:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            _refuse("tool_choice", f"must be one of {', '.join(_TOOL_CHOICES)}, or an object naming a function")
        return
    if not isinstance(choice.get("type"), str):
        _refuse("tool_choice.type", "must be a string")
    if choice["type"] == "function":
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            _refuse("tool_choice.function.name", "must name the function to call (a string)")


def _check_response_format(fmt: dict[str, Any]) -> None:
    kind = fmt.get("type")
    if kind not in _RESPONSE_FORMATS:
        _refuse("response_format.type", f"must be one of {', '.join(_RESPONSE_FORMATS)}")
    if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        _refuse("response_format.json_schema", "a json_schema response format needs its json_schema (an object)")


def _refuse(param: str, why: str) -> NoReturn:
    raise InvalidRequest(f"Invalid value for '{param}': {why}.", param=param)
