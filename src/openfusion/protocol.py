"""OpenAI wire models: the request, usage, and the shapes openfusion renders. Extra fields are kept."""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, Required

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, with_config
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class WireModel(BaseModel):
    """Base for wire models: unknown fields are kept, so pass-through loses nothing."""

    model_config = ConfigDict(extra="allow")


# Never part of a name or an id: C0 controls, DEL and UTF-16 surrogates. PostgreSQL text cannot hold NUL,
# UTF-8 cannot encode a lone surrogate, and a line break in a name would forge log lines and prompt tags.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
NAME_ERROR = "control characters and unpaired surrogates are not allowed in names and ids"


def plain_name(value: str) -> str:
    """`value` unchanged, or ValueError when it holds a character no name or id may contain."""
    if _NOT_IN_NAMES.search(value):
        raise ValueError(NAME_ERROR)
    return value


# A name or an id a client sends (message and function names, tool call ids, presets).
PlainName = Annotated[str, AfterValidator(plain_name)]
# A model slug as openfusion accepts it anywhere: requests, fallbacks, presets, plugin parameters.
MAX_SLUG_LENGTH = 256
ModelSlug = Annotated[str, Field(min_length=1, max_length=MAX_SLUG_LENGTH), AfterValidator(plain_name)]


# A message and its tool calls are validated as TypedDicts, not models: the result is plain dicts equal to the ones
# sent (what a run reads and forwards), made in about a third of the time. A coding agent's conversation has
# hundreds of messages. Unknown keys are kept, as on every wire model.
@with_config(ConfigDict(extra="allow"))
class ToolCallFunction(TypedDict, total=False):
    name: str | None
    arguments: str | None  # JSON text, as OpenAI sends it


@with_config(ConfigDict(extra="allow"))
class ToolCall(TypedDict, total=False):
    """One tool call of an assistant message, as a client sends it back in the conversation."""

    id: str | None
    type: str | None
    function: ToolCallFunction | None


@with_config(ConfigDict(extra="allow"))
class Message(TypedDict, total=False):
    role: Required[Role]
    content: str | list[Any] | None
    name: PlainName | None
    tool_calls: list[ToolCall] | None


class ChatRequest(WireModel):
    """A `POST /v1/chat/completions` body, validated only as far as openfusion needs it."""

    model: ModelSlug
    messages: list[Message] = Field(min_length=1)
    # Strict, as OpenAI: `"stream": "false"` read as False here would reach a provider that reads it as true, and
    # `"max_tokens": true` is no bound (pass-through forwards the body as sent).
    stream: bool = Field(default=False, strict=True)
    temperature: float | None = Field(default=None, strict=True)  # an integer is a number too
    max_tokens: int | None = Field(default=None, strict=True)
    max_completion_tokens: int | None = Field(default=None, strict=True)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, strict=True)
    response_format: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    n: int | None = Field(default=None, strict=True)
    # OpenRouter's fallback list for pass-through requests: tried in order after `model`.
    models: list[ModelSlug] | None = Field(default=None, max_length=8)

    @classmethod
    def of(cls, data: dict[str, Any]) -> ChatRequest:
        """`data` validated (ValidationError as `model_validate`), its messages kept as sent when they are plain
        dicts: validating a message changes nothing in it (its fields are strings checked as they are; what it does
        not name is kept), so the validated copies are let go at once and the request holds the conversation once.
        """
        request = cls.model_validate(data)
        sent = data.get("messages")
        if type(sent) is list and all(type(message) is dict for message in sent):
            request.__dict__["messages"] = sent
        return request

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as plain dicts (as the client sent them, from `of`), shared by everyone who reads them (the
        run, its worst-case cost, its turn key, its trace), so nobody may change them."""
        return self.messages  # type: ignore[return-value]  # a TypedDict is a dict

    def candidate_models(self) -> list[str]:
        """`model`, then the `models` fallbacks not already tried."""
        return [self.model, *(m for m in self.models or [] if m != self.model)]

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value


def without_empty_tools(body: dict[str, Any]) -> dict[str, Any]:
    """A translated chat body without `tools`, `tool_choice` and `parallel_tool_calls` when no tool is left to offer
    (every tool the client sent runs elsewhere: a hosted one, Anthropic's own): some providers refuse an empty
    `tools` (DeepSeek), and OpenAI refuses the other two without tools."""
    if not body.get("tools"):
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            body.pop(key, None)
    return body


def unsafe_name_param(data: Mapping[str, Any]) -> str | None:
    """The first name or id in a raw request's free-form parts (tools, tool calls) that `plain_name` refuses."""
    for path, value in _free_form_names(data):
        if isinstance(value, str) and _NOT_IN_NAMES.search(value):
            return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    return None


def _free_form_names(data: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(path, value) of each: a path as parts, made into a parameter name only for the one refused (an agent's
    conversation has hundreds of tool calls)."""
    yield ("user",), data.get("user")
    for i, tool in enumerate(_items(data.get("tools"))):
        yield ("tools", i, "function", "name"), _fields(_fields(tool).get("function")).get("name")
    yield ("tool_choice", "function", "name"), _fields(_fields(data.get("tool_choice")).get("function")).get("name")
    for i, message in enumerate(_items(data.get("messages"))):
        fields = _fields(message)
        yield ("messages", i, "tool_call_id"), fields.get("tool_call_id")
        for j, call in enumerate(_items(fields.get("tool_calls"))):
            call_fields = _fields(call)
            yield ("messages", i, "tool_calls", j, "id"), call_fields.get("id")
            yield ("messages", i, "tool_calls", j, "function", "name"), _fields(call_fields.get("function")).get("name")


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _fields(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# No single upstream call costs more than this: a reported cost above it (1e308 from a broken or hostile upstream)
# is no cost at all, and would otherwise fill every spend cap and the cost metric for good.
MAX_REPORTED_CALL_USD = 10_000.0


def plausible_cost(reported: float | None) -> float | None:
    """An upstream's reported cost in USD, or None when there is none or it cannot be one (negative, not finite,
    above MAX_REPORTED_CALL_USD)."""
    if reported is None or not math.isfinite(reported) or not 0 <= reported <= MAX_REPORTED_CALL_USD:
        return None
    return float(reported)


def reported_cost(value: Any) -> float | None:
    """A usage object's `cost` field as sent: a number (a bool is none), or None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def round_usd(value: float) -> float:
    """A cost in USD without float noise: sums and products of prices to 12 significant digits
    (0.0012929999999999999 -> 0.001293), tiny per-token prices kept as they are."""
    return float(f"{value:.12g}")


class Usage(WireModel):
    """Token usage; `cost` (USD) only when an upstream reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None

    def __add__(self, other: Usage) -> Usage:
        return sum_usage([self, other])

    @property
    def cache_read_tokens(self) -> int:
        """Prompt tokens read from the provider's prompt cache (`prompt_tokens_details.cached_tokens`)."""
        return self._prompt_detail("cached_tokens")

    @property
    def cache_write_tokens(self) -> int:
        """Prompt tokens written to the provider's prompt cache (`prompt_tokens_details.cache_write_tokens`)."""
        return self._prompt_detail("cache_write_tokens")

    @property
    def cache_write_1h_tokens(self) -> int:
        """Of the cache writes, those kept for an hour (`prompt_tokens_details.cache_write_1h_tokens`: Anthropic's
        `cache_creation.ephemeral_1h_input_tokens`), billed dearer than the default 5-minute ones."""
        return self._prompt_detail("cache_write_1h_tokens")

    @property
    def splits_cache_writes(self) -> bool:
        """Whether the cache writes' 1-hour share was reported (`cache_write_1h_tokens`, 0 included): without it,
        which writes are kept for an hour is not known from the usage alone."""
        details = (self.__pydantic_extra__ or {}).get("prompt_tokens_details")
        return isinstance(details, dict) and isinstance(details.get("cache_write_1h_tokens"), int)

    def _prompt_detail(self, name: str) -> int:
        details = (self.__pydantic_extra__ or {}).get("prompt_tokens_details")
        value = details.get(name) if isinstance(details, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    def render(self) -> dict[str, Any]:
        """The wire form: the three token counts, the token details an upstream reported (cached, reasoning: summed
        over a fusion's calls), and `cost` when known."""
        wire: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        extra = self.__pydantic_extra__
        if extra:
            wire.update((key, extra[key]) for key in _DETAILS if isinstance(extra.get(key), dict))
        if self.cost is not None:
            wire["cost"] = self.cost
        return wire


class _Summed:
    """`sum_usage`'s default cost: the sum of the usages' own."""


_SUMMED = _Summed()


def sum_usage(usages: list[Usage], *, cost: float | _Summed | None = _SUMMED) -> Usage:
    """Sum token counts, token details and costs over several upstream calls (as `+` would, one after the other);
    `cost`, when given, is the sum's cost instead of the usages' (a bill's, priced call by call)."""
    if not usages:
        return Usage() if isinstance(cost, _Summed) else Usage(cost=cost)
    # Summed as plain numbers and built once: a Usage per addition costs more than the arithmetic.
    prompt = completion = total = 0
    summed: float | None = None
    details: dict[str, dict[str, int]] = {}
    for usage in usages:
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
        total += usage.total_tokens
        if summed is not None or usage.cost is not None:
            summed = round_usd((summed or 0.0) + (usage.cost or 0.0))
        if usage.__pydantic_extra__:
            _add_details(details, usage.__pydantic_extra__)
    if not isinstance(cost, _Summed):
        summed = cost
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, cost=summed, **details)


def _add_details(into: dict[str, dict[str, int]], extra: dict[str, Any]) -> None:
    """Add one usage's token details (`cached_tokens`, `reasoning_tokens`, …: the counts in them) to `into`."""
    for key in _DETAILS:
        part = extra.get(key)
        if isinstance(part, dict):
            summed = into.setdefault(key, {})
            for name, value in part.items():
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    summed[name] = summed.get(name, 0) + value


def parse_usage(raw: Any) -> Usage:
    """Read an upstream `usage` object leniently: missing or odd fields count as zero / unknown."""
    if not isinstance(raw, dict):
        return Usage()

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    total = count("total_tokens") or prompt + completion
    # The token details (cached, reasoning) ride along for surfaces that report them; sums drop them.
    details = {key: raw[key] for key in _DETAILS if isinstance(raw.get(key), dict)}
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cost=reported_cost(raw.get("cost")),
        **details,
    )


_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def token_count(details: Any, name: str) -> int:
    """One count of a usage's token details (`cached_tokens` of `prompt_tokens_details`); 0 when absent or odd."""
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def new_generation_id() -> str:
    """A response id in OpenRouter's style: `gen-<unix time>-<random>`."""
    return f"gen-{int(time.time())}-{secrets.token_urlsafe(15)}"


def completion_body(
    *,
    generation_id: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str | None,
    usage: Usage,
    created: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `chat.completion` object."""
    body: dict[str, Any] = {
        "id": generation_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage.render(),
    }
    if extra:
        body.update(extra)
    return body


def chunk_body(
    *,
    generation_id: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `chat.completion.chunk` object."""
    body: dict[str, Any] = {
        "id": generation_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if extra:
        body.update(extra)
    return body
