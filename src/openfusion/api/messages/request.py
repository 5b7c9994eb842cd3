"""An Anthropic Messages request, validated, and translated into the internal chat request.

`system` becomes a system message, content blocks chat content (tool_use blocks tool calls,
tool_result blocks tool messages, images image parts), `tools` chat function tools, `tool_choice`
its chat form, `stop_sequences` `stop`, `max_tokens` `max_completion_tokens`, `thinking` a
`reasoning` object, `metadata.user_id` `user`. Fields openfusion cannot use (`cache_control`,
`output_config`, `context_management`, `container`, `service_tier`, …) are accepted and ignored; a
wrong type is a 400 naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openfusion.api.body import tools_typed
from openfusion.api.messages.conversation import chat_messages
from openfusion.api.params import ParamNames, renamed
from openfusion.errors import InvalidRequest, invalid_request_from, invalid_value
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
from openfusion.upstream.reasoning import effort_for_budget

_MAX_STOPS = 4  # what chat providers take (OpenAI refuses more)
_MIN_THINKING_BUDGET = 1024  # Anthropic's minimum for `thinking.budget_tokens`
# Anthropic's server tools billed per use on top of tokens (web search per search, code execution per container hour).
_BILLED_APART = ("web_search_", "code_execution_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Thinking(_Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1, strict=True)
    display: str | None = None


class _Metadata(_Strict):
    user_id: PlainName | None = Field(default=None, max_length=512)


class MessagesRequest(WireModel):
    """A `POST /v1/messages` body, validated as far as openfusion needs it."""

    model: ModelSlug
    max_tokens: int = Field(ge=1, strict=True)  # as Anthropic: 10, not "10" nor true
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = Field(default=False, strict=True)  # as the API: "yes" or 1 is no boolean
    temperature: float | None = Field(default=None, ge=0, le=1, strict=True)
    top_p: float | None = Field(default=None, ge=0, le=1, strict=True)
    top_k: int | None = Field(default=None, ge=0, strict=True)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: _Thinking | None = None
    metadata: _Metadata | None = None
    # OpenRouter's fields: the fusion plugin, and fallbacks for pass-through.
    plugins: list[dict[str, Any]] | None = None
    models: list[ModelSlug] | None = Field(default=None, max_length=8)

    @property
    def shows_thinking(self) -> bool:
        """Whether the answer's reasoning goes out as thinking blocks (asked for, and not to be omitted)."""
        thinking = self.thinking
        return thinking is not None and thinking.type != "disabled" and thinking.display != "omitted"


@dataclass
class Translated:
    """A Messages request as the pipeline sees it: the chat request and its body (for a chat provider)."""

    request: MessagesRequest
    chat: ChatRequest
    body: dict[str, Any]  # the chat-completions body, openfusion's own fields included
    raw: dict[str, Any]  # the request as the client sent it (for a provider that speaks Messages)
    names: ParamNames  # the client's names for the chat body's parameters, for errors found in it


def parse_request(data: dict[str, Any]) -> MessagesRequest:
    """The validated request; a wrong type is a 400 naming the parameter."""
    try:
        request = MessagesRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    if request.stop_sequences is not None and len(request.stop_sequences) > _MAX_STOPS:
        raise InvalidRequest(
            f"Invalid value for 'stop_sequences': at most {_MAX_STOPS} stop sequences are supported.",
            param="stop_sequences",
        )
    _check_content(request)
    _check_tool_results(request)
    _check_thinking(request)
    _check_tools(request)
    return request


def _check_content(request: MessagesRequest) -> None:
    """Every message has content, but the final one when it is the assistant's (a prefill to go on from)."""
    last = len(request.messages) - 1
    for position, message in enumerate(request.messages):
        if not isinstance(message, dict) or message.get("content") not in ("", []):
            continue
        if position == last and message.get("role") == "assistant":
            continue
        raise InvalidRequest(
            f"Invalid value for 'messages[{position}].content': all messages must have non-empty content except for "
            "the optional final assistant message.",
            param=f"messages[{position}].content",
        )


def _check_tool_results(request: MessagesRequest) -> None:
    """Each tool_use is answered by a tool_result in the user turn after it, and each tool_result answers a tool_use
    of the assistant turn before it, as Anthropic requires, and as chat providers require of tool calls and tool
    messages: a fusion would learn it only from its synthesizer. Consecutive messages of one role are one turn, as
    Anthropic joins them; system turns aside. Calls of a final assistant turn (a prefill) are not checked."""
    asked: dict[str, int] = {}  # the tool_use ids of the assistant turn before, with the position of each's message
    for role, messages in _turns(request.messages):
        if role == "assistant":
            asked = {block["id"]: position for position, blocks in messages for block in blocks
                     if block.get("type") == "tool_use" and isinstance(block.get("id"), str)}  # fmt: skip
            continue
        answered: set[Any] = set()
        for position, blocks in messages:
            for index, block in enumerate(blocks):
                call_id = block.get("tool_use_id")  # (one missing or empty is refused as such later)
                if block.get("type") != "tool_result":
                    continue
                if isinstance(call_id, str) and call_id and call_id not in asked:
                    raise invalid_value(f"messages[{position}].content[{index}].tool_use_id",
                                        f"unexpected tool_use_id {call_id!r}: each tool_result block must have a "
                                        "corresponding tool_use block in the previous message")  # fmt: skip
                answered.add(call_id if isinstance(call_id, str) and call_id else None)
        unanswered = [call_id for call_id in asked if call_id not in answered]
        if unanswered and None not in answered:  # (a result without its id: that is the error to name)
            ids = ", ".join(repr(call_id)[:80] for call_id in unanswered[:5])
            raise invalid_value(f"messages[{asked[unanswered[0]]}]",
                                f"tool_use ids were found without tool_result blocks immediately after: {ids}. "
                                "Each tool_use block must have a corresponding tool_result block in the next "
                                "message")  # fmt: skip
        asked = {}


def _turns(messages: list[Any]) -> list[tuple[str, list[tuple[int, list[dict[str, Any]]]]]]:
    """The user and assistant turns: each its role and its messages (position, blocks; a string content has none)."""
    turns: list[tuple[str, list[tuple[int, list[dict[str, Any]]]]]] = []
    for position, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            continue
        content = message.get("content")
        blocks = [b if isinstance(b, dict) else {} for b in content] if isinstance(content, list) else []
        if turns and turns[-1][0] == role:
            turns[-1][1].append((position, blocks))
        else:
            turns.append((role, [(position, blocks)]))
    return turns


def _check_thinking(request: MessagesRequest) -> None:
    """Thinking with a budget of at least 1024 tokens, below `max_tokens` (as Anthropic requires)."""
    thinking = request.thinking
    if thinking is None or thinking.type != "enabled":
        return
    if thinking.budget_tokens is None:
        raise InvalidRequest("Missing required parameter: 'thinking.budget_tokens'.", param="thinking.budget_tokens")
    if thinking.budget_tokens < _MIN_THINKING_BUDGET:
        raise invalid_value("thinking.budget_tokens", f"it must be at least {_MIN_THINKING_BUDGET}")
    if thinking.budget_tokens >= request.max_tokens:
        raise InvalidRequest(
            "Invalid value for 'max_tokens': it must be greater than thinking.budget_tokens "
            f"({thinking.budget_tokens}).",
            param="max_tokens",
        )


def _check_tools(request: MessagesRequest) -> None:
    """Tools with a type that is a string (or none), each name once; a tool_choice of type tool names one of them."""
    names: set[str] = set()
    for position, tool in enumerate(request.tools or []):
        param = f"tools[{position}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"Invalid value for '{param}': a tool must be an object.", param=param)
        if "type" in tool and not isinstance(tool["type"], str):
            raise InvalidRequest(f"Invalid value for '{param}.type': expected a string.", param=f"{param}.type")
        schema = tool.get("input_schema")
        if "input_schema" in tool and not isinstance(schema, dict):
            where = f"{param}.input_schema"
            raise InvalidRequest(f"Invalid value for '{where}': expected a JSON schema object.", param=where)
        if isinstance(schema, dict) and "type" in schema and schema["type"] != "object":  # as Anthropic and chat
            raise invalid_value(f"{param}.input_schema.type", "a tool's input schema is of type 'object'")
        name = tool.get("name")
        if isinstance(name, str):
            if name in names:
                raise InvalidRequest(
                    f"Invalid value for '{param}.name': tool names must be unique ({name!r} is there twice).",
                    param=f"{param}.name",
                )
            names.add(name)
    choice = request.tool_choice or {}
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str) and choice["name"] not in names:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice.name': no tool is named {choice['name']!r}.", param="tool_choice.name"
        )


def translate(request: MessagesRequest, raw: dict[str, Any], *, lenient: bool = False) -> Translated:
    """The internal chat request for a Messages request (`lenient`: see `chat_messages`)."""
    messages, origins = chat_messages(request.system, request.messages, lenient=lenient)
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    body.update(_sampling(request))
    tools = [i for i, tool in enumerate(request.tools or []) if _kept(tool)]
    names = ParamNames(fields=_FIELDS, messages=origins, tools=tools, tool_fields=_TOOL_FIELDS)
    try:
        chat = ChatRequest.of(body)
    except ValidationError as exc:
        raise renamed(invalid_request_from(exc), names) from None
    return Translated(request=request, chat=chat, body=body, raw=raw, names=names)


# Chat parameters under their Messages names (the others are the same in both).
_FIELDS = {"max_completion_tokens": "max_tokens", "stop": "stop_sequences", "user": "metadata.user_id",
           "reasoning": "thinking", "parallel_tool_calls": "tool_choice.disable_parallel_tool_use"}  # fmt: skip
_TOOL_FIELDS = {".function.name": ".name", ".function.parameters": ".input_schema", ".function": ""}


def _sampling(request: MessagesRequest) -> dict[str, Any]:
    """Everything but the messages, in chat-completions names."""
    out: dict[str, Any] = {"max_completion_tokens": request.max_tokens}
    for name in ("temperature", "top_p", "plugins", "models"):
        value = getattr(request, name)
        if value is not None:
            out[name] = value
    if request.top_k is not None:
        out["top_k"] = request.top_k  # not a chat field: only the providers that know it (a pass-through) use it
    if request.stop_sequences:
        out["stop"] = request.stop_sequences
    if request.metadata is not None and request.metadata.user_id:
        out["user"] = request.metadata.user_id
    reasoning = _reasoning(request)
    if reasoning is not None:
        out["reasoning"] = reasoning
    if request.tools is not None:
        tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
        out["tools"] = [tool for tool in tools if tool is not None]
    if request.tool_choice is not None:
        out.update(_tool_choice(request.tool_choice))
    return without_empty_tools(out)


def _reasoning(request: MessagesRequest) -> dict[str, Any] | None:
    """`thinking` with a budget as a reasoning effort (every provider style takes one; OpenRouter turns it back
    into a budget for Anthropic's models); adaptive thinking is the model's own call."""
    thinking = request.thinking
    if thinking is None or thinking.type != "enabled" or thinking.budget_tokens is None:
        return None
    return {"effort": effort_for_budget(thinking.budget_tokens, request.max_tokens)}


def tools_billed_apart(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(param, type) of each tool in the body that Anthropic runs itself and bills per use, apart from tokens: web
    search (per search) and code execution (per container hour). Sent only to a provider that speaks Messages."""
    return tools_typed(raw, _BILLED_APART)


def _kept(tool: dict[str, Any]) -> bool:
    """Whether a (valid) tool goes to the chat model: Anthropic's own tools (bash_…, web_search_…) and deferred
    ones do not, having no schema a chat model can use."""
    kind = tool.get("type")
    return kind in FUSION_TOOL_TYPES or (kind in (None, "custom") and tool.get("defer_loading") is not True)


def _tool(tool: Any, param: str) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"Invalid value for '{param}': a tool must be an object.", param=param)
    kind = tool.get("type")
    if not _kept(tool):
        return None
    if kind in FUSION_TOOL_TYPES:
        return tool
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"Missing required parameter: '{param}.name'.", param=f"{param}.name")
    _check_name(name, f"{param}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"Missing required parameter: '{param}.input_schema'.", param=f"{param}.input_schema")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    if kind in ("auto", "none"):
        out["tool_choice"] = kind
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Missing required parameter: 'tool_choice.name'.", param="tool_choice.name")
        _check_name(name, "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif kind in FUSION_TOOL_TYPES:
        out["tool_choice"] = choice
    else:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice.type': {kind!r} (expected auto, any, tool or none).",
            param="tool_choice.type",
        )
    return out


def _check_name(name: str, param: str) -> None:
    try:
        plain_name(name)
    except ValueError:
        raise InvalidRequest(f"Invalid value for '{param}': {NAME_ERROR}.", param=param) from None
