"""A Responses API request, validated, and translated into the internal chat request.

Input items become chat messages (function calls and their outputs as tool calls and tool
messages), `instructions` a system message, function tools chat tools, `text.format` a
`response_format`, `max_output_tokens` `max_completion_tokens`. Unknown fields are ignored, as
OpenAI does; a wrong type is a 400 naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openfusion.api.body import tools_typed
from openfusion.api.params import ParamNames, renamed
from openfusion.api.responses.content import check_image_details, media_parts, text_of, tool_output, user_content
from openfusion.errors import InvalidRequest, invalid_request_from, invalid_value, missing
from openfusion.pipeline.plan import FUSION_TOOL_TYPES
from openfusion.protocol import (
    NAME_ERROR,
    ChatRequest,
    ModelSlug,
    PlainName,
    WireModel,
    plain_name,
    without_empty_tools,
)
from openfusion.upstream.reasoning import OPENROUTER_REASONING_KEYS

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
# Tools only OpenAI (or the client itself) can run: a chat provider cannot take them, so they are left out.
_CHAT_TOOL_TYPES = ("function", *FUSION_TOOL_TYPES)
# OpenAI's hosted tools billed per use on top of tokens: web search and file search per call, code interpreter per
# container, image generation per image.
_BILLED_APART = ("web_search", "file_search", "code_interpreter", "image_generation")
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a json_schema format's `name`, as OpenAI takes it


class ResponsesRequest(WireModel):
    """A `POST /v1/responses` body, validated as far as openfusion needs it."""

    model: ModelSlug
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = Field(default=False, strict=True)  # as the API: "yes" or 1 is no boolean
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    # OpenAI's limits: 16 pairs, keys of 64 characters, values of 512.
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )
    truncation: Literal["auto", "disabled"] | None = None  # echoed; the provider's context is the provider's
    plugins: list[dict[str, Any]] | None = None
    store: bool | None = None
    previous_response_id: PlainName | None = Field(default=None, min_length=1, max_length=256)
    user: PlainName | None = None
    background: bool | None = None
    models: list[ModelSlug] | None = Field(default=None, max_length=8)


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


@dataclass
class Translated:
    """A Responses request as the pipeline sees it: the chat request and its body (for a chat provider)."""

    request: ResponsesRequest
    chat: ChatRequest
    body: dict[str, Any]  # the chat-completions body, openfusion's own fields included
    items: list[dict[str, Any]]  # the conversation as input items (history first), for a stored response
    raw: dict[str, Any]  # the body as the client sent it (for a provider that speaks the Responses API)
    names: ParamNames  # the client's names for the chat body's parameters, for errors found in it


def parse_request(data: dict[str, Any]) -> ResponsesRequest:
    """The validated request; a wrong type is a 400 naming the parameter."""
    try:
        request = ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    if request.background:
        raise InvalidRequest("Background responses are not supported: send 'background': false.", param="background")
    if data.get("conversation") is not None:
        raise InvalidRequest(
            "Conversations are not supported: continue with 'previous_response_id'.", param="conversation"
        )
    return request


def tools_billed_apart(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(param, type) of each hosted tool in the body that the provider runs itself and bills per use, apart from
    tokens. Sent only to a provider that speaks the Responses API (a chat provider never gets them)."""
    return tools_typed(raw, _BILLED_APART)


def input_items(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's `input` as a list of items (a string is one user message)."""
    if request.input is None:
        return []
    if isinstance(request.input, str):
        return [{"type": "message", "role": "user", "content": request.input}]
    return list(request.input)


def translate(
    request: ResponsesRequest, history: list[dict[str, Any]] | None = None, *, raw: dict[str, Any] | None = None
) -> Translated:
    """The internal chat request for a Responses request, after the stored `history` items if any."""
    own = input_items(request)
    items = [*(history or []), *own]
    offset = len(history or [])
    messages: list[dict[str, Any]] = []
    origins: list[str] = []  # the parameter each chat message came from
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
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
    if not items:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if not messages:  # only items a chat model cannot read (reasoning, fusion results), and no instructions
        raise InvalidRequest(
            "Invalid value for 'input': no message, function call or function call output to answer.", param="input"
        )
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    body.update(_sampling(request))
    tools = [i for i, tool in enumerate(request.tools or []) if tool.get("type") in _CHAT_TOOL_TYPES]
    names = ParamNames(fields=_FIELDS, messages=origins, tools=tools, tool_fields=_TOOL_FIELDS)
    try:
        chat = ChatRequest.of(body)
    except ValidationError as exc:
        raise renamed(invalid_request_from(exc), names) from None
    return Translated(request=request, chat=chat, body=body, items=items, raw=raw or {}, names=names)


# Chat parameters under their Responses names (the others are the same in both).
_FIELDS = {"max_completion_tokens": "max_output_tokens", "response_format": "text.format", "messages": "input"}
_TOOL_FIELDS = {".function.name": ".name", ".function.parameters": ".parameters", ".function": ""}


def _sampling(request: ResponsesRequest) -> dict[str, Any]:
    """Everything but the messages, in chat-completions names."""
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "plugins", "models"):
        value = getattr(request, name)
        if value is not None:
            out[name] = value
    if request.max_output_tokens is not None:
        out["max_completion_tokens"] = request.max_output_tokens
    if request.reasoning is not None:
        effort = request.reasoning.get("effort")
        out["reasoning"] = {"effort": effort} if effort is not None else {}
        for key in OPENROUTER_REASONING_KEYS:
            if key in request.reasoning:
                out["reasoning"][key] = request.reasoning[key]
    if request.tools is not None:
        tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
        out["tools"] = [tool for tool in tools if tool is not None]
    if request.tool_choice is not None:
        out["tool_choice"] = _tool_choice(request.tool_choice, request.tools or [])
    response_format = _response_format(request.text)
    if response_format is not None:
        out["response_format"] = response_format
    return without_empty_tools(out)


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any] | None:
    kind = tool.get("type")
    if kind in FUSION_TOOL_TYPES:
        return tool
    if kind != "function":
        return None  # web_search, file_search, namespace…: run by OpenAI or the client, not by a chat model
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"Missing required parameter: '{param}.name'.", param=f"{param}.name")
    _check_name(name, f"{param}.name")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):  # null is OpenAI's "no parameters"
        raise invalid_value(f"{param}.parameters", "expected a JSON schema object")
    if isinstance(parameters, dict) and "type" in parameters and parameters["type"] != "object":  # as OpenAI
        raise invalid_value(f"{param}.parameters.type", "a function's parameters are a schema of type 'object'")
    function = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _check_name(name: str, param: str) -> None:
    try:
        plain_name(name)
    except ValueError:
        raise InvalidRequest(f"Invalid value for '{param}': {NAME_ERROR}.", param=param) from None


def _tool_choice(choice: str | dict[str, Any], tools: list[dict[str, Any]]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': {choice!r} (expected auto, none or required).", param="tool_choice"
            )
        return choice
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Missing required parameter: 'tool_choice.name'.", param="tool_choice.name")
        _check_name(name, "tool_choice.name")
        if name not in _function_names(tools):  # as OpenAI refuses it (a fusion's synthesizer would, after the panel)
            raise invalid_value("tool_choice.name", f"no function tool is named {name!r}")
        return {"type": "function", "function": {"name": name}}
    if kind in FUSION_TOOL_TYPES:
        return choice
    if kind == "allowed_tools":
        return "required" if choice.get("mode") == "required" else "auto"
    return "auto"  # a hosted tool the chat model is not offered


def _function_names(tools: list[dict[str, Any]]) -> set[Any]:
    """The names of the function tools, those a tool holds in its own `tools` (Codex's namespaces) included."""
    nested = [inner for tool in tools if isinstance(tool.get("tools"), list) for inner in tool["tools"]]
    return {tool.get("name") for tool in tools + nested if isinstance(tool, dict) and tool.get("type") == "function"}


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as a chat `response_format` (None: plain text); a format without its type, or a json_schema
    without its name or schema, is a 400 rather than an answer in a shape the client did not ask for."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_value("text.format", "expected an object with a type")
    kind = fmt.get("type")
    if kind is None:
        raise missing("text.format.type", " (text, json_object or json_schema)")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": _json_schema(fmt)}
    raise InvalidRequest(
        f"Invalid value for 'text.format.type': {kind!r} (expected text, json_object or json_schema).",
        param="text.format.type",
    )


def _json_schema(fmt: dict[str, Any]) -> dict[str, Any]:
    """A json_schema format's chat `json_schema`: its name (letters, digits, _ and -, at most 64) and its schema."""
    name = fmt.get("name")
    if name is None:
        raise missing("text.format.name")
    if not isinstance(name, str):
        raise invalid_value("text.format.name", "expected a string")
    if not _FORMAT_NAME.fullmatch(name):
        raise invalid_value("text.format.name", "only letters, digits, underscores and dashes, at most 64")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise missing("text.format.schema")
    spec = {"name": name, "schema": schema}
    spec.update({k: fmt[k] for k in ("strict", "description") if k in fmt})
    return spec


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
