"""A Responses API request, validated.

Unknown fields are ignored, as OpenAI does; a wrong type is a 400 naming the parameter. What the request
becomes for the pipeline is `translation`'s business.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from openfusion.api.body import tools_typed
from openfusion.errors import InvalidRequest, invalid_request_from
from openfusion.protocol import ModelSlug, PlainName, WireModel

# OpenAI's hosted tools billed per use on top of tokens: web search and file search per call, code interpreter per
# container, image generation per image.
_BILLED_APART = ("web_search", "file_search", "code_interpreter", "image_generation")


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
