"""Responses content parts as chat content.

Chat holds images and files only in user messages, and a tool message's content only as text. So a user
message's parts map one to one; a system, developer or assistant message keeps its text and its images and files
follow it in a user turn; a `function_call_output`'s text parts become the tool message's content and its images
and files a user turn after the tool messages of that turn. Nothing a chat model can read is dropped.
"""

from __future__ import annotations

from typing import Any

from openfusion.errors import InvalidRequest, invalid_value

IMAGE_DETAILS = ("low", "high", "auto", "original")  # an input_image's `detail`, as OpenAI takes it
_TEXT_PARTS = ("input_text", "output_text", "text")
_MEDIA_PARTS = ("input_image", "input_file")


def check_image_details(content: str | list[dict[str, Any]], param: str) -> None:
    """Every input_image part's `detail` is absent or one OpenAI knows: in any message, since a provider that speaks
    the Responses API gets the parts as sent, and a chat provider refuses an unknown one (a fusion panel, all of it)."""
    if isinstance(content, str):
        return
    for position, part in enumerate(content):
        detail = part.get("detail")
        if part.get("type") == "input_image" and detail is not None and detail not in IMAGE_DETAILS:
            raise invalid_value(f"{param}[{position}].detail", f"{detail!r} (expected low, high, auto or original)")


def user_content(content: str | list[dict[str, Any]], *, param: str) -> str | list[dict[str, Any]]:
    """A user message's content: its parts as chat parts (one text part alone: a string)."""
    if isinstance(content, str):
        return content
    parts = [chat_part(part, f"{param}[{position}]") for position, part in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def media_parts(content: str | list[dict[str, Any]], *, param: str) -> list[dict[str, Any]]:
    """The images and files among `content`'s parts, as chat user parts (for a role chat holds them in no other)."""
    if isinstance(content, str):
        return []
    return [
        chat_part(part, f"{param}[{position}]")
        for position, part in enumerate(content)
        if part.get("type") in _MEDIA_PARTS
    ]


def tool_output(output: str | list[dict[str, Any]], *, param: str) -> tuple[str | list[dict[str, Any]], list[dict]]:
    """A function_call_output's `output`: the tool message's content (its text parts) and its images and files."""
    if isinstance(output, str):
        return output, []
    parts = [chat_part(part, f"{param}[{position}]") for position, part in enumerate(output)]
    texts = [part for part in parts if part["type"] == "text"]
    content: str | list[dict[str, Any]] = str(texts[0]["text"]) if len(texts) == 1 else texts
    return content or "", [part for part in parts if part["type"] != "text"]


def text_of(parts: list[dict[str, Any]]) -> str:
    """The text of a non-user message's parts (output_text, input_text; a refusal or other part has none)."""
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def chat_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """One Responses content part as a chat content part; one chat cannot hold is a 400 naming it."""
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if text is None:  # as OpenAI: no text is no part (and a run on an empty prompt costs a whole fusion)
            raise InvalidRequest(f"Missing required parameter: '{where}.text'.", param=f"{where}.text")
        if not isinstance(text, str):
            raise InvalidRequest(f"Invalid value for '{where}.text': expected a string.", param=f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            message = f"Missing required parameter: '{where}.image_url' (file ids are not supported)."
            raise InvalidRequest(message, param=f"{where}.image_url")
        image = {"url": url, **({"detail": part["detail"]} if part.get("detail") else {})}
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "filename", "file_id") if isinstance(part.get(k), str)}
        if "file_data" not in file and "file_id" not in file:  # a file_url has no chat form: it would be lost
            message = f"Missing required parameter: '{where}.file_data' (or file_id; file_url is not supported)."
            raise InvalidRequest(message, param=f"{where}.file_data")
        return {"type": "file", "file": file}
    raise InvalidRequest(f"Invalid value for '{where}.type': content parts of type {kind!r} are not supported.",
                         param=f"{where}.type")  # fmt: skip
