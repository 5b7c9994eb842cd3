"""A Responses request's other fields in chat-completions terms: sampling, tools, tool_choice, text.format.

Function tools become chat tools (hosted ones, run by OpenAI or the client, are left out), `tool_choice` a chat
tool choice, `text.format` a `response_format`, `max_output_tokens` `max_completion_tokens`; a value no chat
model could take is a 400 naming the client's parameter.
"""

from __future__ import annotations

import re
from typing import Any

from openfusion.api.responses.request import ResponsesRequest
from openfusion.errors import InvalidRequest, invalid_value, missing
from openfusion.pipeline.plan import FUSION_TOOL_TYPES
from openfusion.protocol import NAME_ERROR, plain_name, without_empty_tools
from openfusion.upstream.reasoning import OPENROUTER_REASONING_KEYS

# Tools only OpenAI (or the client itself) can run: a chat provider cannot take them, so they are left out.
_CHAT_TOOL_TYPES = ("function", *FUSION_TOOL_TYPES)
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a json_schema format's `name`, as OpenAI takes it


def chat_tool_indexes(request: ResponsesRequest) -> list[int]:
    """The index in `tools` of each tool the chat request offers, in order."""
    return [i for i, tool in enumerate(request.tools or []) if tool.get("type") in _CHAT_TOOL_TYPES]


def chat_parameters(request: ResponsesRequest) -> dict[str, Any]:
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
