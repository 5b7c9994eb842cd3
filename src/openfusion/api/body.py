"""Reading a request body: size limit and JSON, with OpenAI-format errors."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import Request
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from openfusion.api.disconnect import ClientDisconnected
from openfusion.errors import InvalidRequest, PayloadTooLarge, invalid_request_from
from openfusion.protocol import MAX_SLUG_LENGTH, NAME_ERROR, ChatRequest, plain_name, unsafe_name_param

log = logging.getLogger("openfusion.requests")

# Deeper than any real request (a JSON schema in `tools` or `response_format` nests a few dozen levels);
# recursive code further on (orjson's encoder stops at 255) must never meet what this refuses.
MAX_JSON_DEPTH = 128


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body too large: {declared} bytes (limit {limit}).")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body too large: more than {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        # A client that gives up mid-upload is routine (a timeout, a closed tab), not a server fault.
        log.info("client closed the connection while sending its body (%d bytes received)", size)
        raise ClientDisconnected("The client closed the connection before its body was complete.") from None
    return b"".join(chunks)


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """The validated request and the raw JSON object it came from (kept whole for pass-through)."""
    data = load_json_object(raw)
    models = data.get("models")
    if "model" not in data and isinstance(models, list) and models and isinstance(models[0], str):
        data = {**data, "model": models[0]}  # OpenRouter allows `models` alone: the first is the primary
    try:
        chat = ChatRequest.of(data)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    param = unsafe_name_param(data)
    if param is not None:
        raise InvalidRequest(f"Invalid value for '{param}': {NAME_ERROR}.", param=param)
    return chat, data


def load_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (nested at most MAX_JSON_DEPTH deep), else a 400 saying what is wrong."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty: send a JSON object.", param="body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg == "depth limit exceeded":  # orjson's own limit (1,024), far above ours
            raise _too_deep() from None
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg}.", param="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    # The walk costs per array and object, not per byte: ~2 µs for a typical conversation.
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise _too_deep()
    return data


def named_model(raw: bytes) -> tuple[str, bool] | None:
    """The model a body names (`model`, else the first of `models`) and whether it asks to stream.

    None when there is no usable one (not JSON, no model, not a plain slug): the refusal is then not recorded.
    Called only for a refused body, so parsing it again costs nothing on the served path.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    model, models = data.get("model"), data.get("models")
    if model is None and isinstance(models, list) and models:
        model = models[0]
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_SLUG_LENGTH:
        return None
    try:
        plain_name(model)
    except ValueError:
        return None
    return model, data.get("stream") is True


def tools_typed(data: dict[str, Any], prefixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(param, type) of each tool in the body's `tools` whose type starts with one of `prefixes`."""
    tools = data.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        (f"tools[{index}]", tool["type"])
        for index, tool in enumerate(tools)
        if isinstance(tool, dict) and isinstance(tool.get("type"), str) and tool["type"].startswith(prefixes)
    ]


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels: a walk level by level, without recursion."""
    level, depth = [data], 1
    while level:
        if depth > limit:
            return True
        below = []
        for value in level:
            for child in value.values() if type(value) is dict else value:
                if type(child) is dict or type(child) is list:  # exact types: what orjson builds, and faster
                    below.append(child)
        level, depth = below, depth + 1
    return False


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.", param="body"
    )
