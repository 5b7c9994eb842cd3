"""Anthropic `system` and `messages` as chat messages.

A user message's `tool_result` blocks become tool messages (before the rest of its content, as a
chat provider expects them right after the calls); an assistant's `tool_use` blocks become its
tool calls; images become image parts (base64 as a data URL); PDF documents file parts. Thinking
blocks and the results of Anthropic's own server tools carry nothing a chat model can read: skipped. Consecutive
messages of one role being one turn to Anthropic, the tool exchanges are then put in chat order (`in_chat_order`).
"""

from __future__ import annotations

from typing import Any

import orjson

from openfusion.api.tool_turns import in_chat_order
from openfusion.errors import InvalidRequest, invalid_value, missing
from openfusion.protocol import NAME_ERROR, plain_name


class Untranslatable(InvalidRequest):
    """A valid Messages block that no chat message can carry (a file id, a container upload, a tool reference):
    refused for a chat model, and no reason to refuse a request that goes to a provider speaking Messages."""


# Assistant blocks that only Anthropic's own servers can read back (or that hold nothing to read).
_SKIPPED = frozenset({"thinking", "redacted_thinking", "server_tool_use", "mcp_tool_use", "container_upload"})
_ROLES = ("user", "assistant", "system")


def chat_messages(
    system: str | list[dict[str, Any]] | None, messages: list[dict[str, Any]], *, lenient: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The chat conversation for a Messages request's `system` and `messages`, and where each came from
    (`system`, `messages[2]`: a message may give several chat messages).

    A block no chat message can carry raises `Untranslatable`; `lenient`, it becomes a placeholder text (`[file
    image]`) instead: for a request that goes to its provider as sent, whose chat form only sizes and checks it.
    """
    out: list[dict[str, Any]] = []
    origins: list[str] = []
    if system:
        text = system if isinstance(system, str) else _system_text(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    for position, message in enumerate(messages):
        origins += ["system"] * (len(out) - len(origins))
        param = f"messages[{position}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid value for '{param}': a message must be an object.", param=param)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value for '{param}.role': {role!r} (expected user, assistant or system).",
                param=f"{param}.role",
            )
        content = message.get("content")
        if not isinstance(content, str | list):
            where = f"{param}.content"
            raise InvalidRequest(f"Invalid value for '{where}': expected a string or a list of blocks.", param=where)
        if role == "system":  # Claude Code sends some instructions as a system turn inside `messages`
            out.append({"role": "system", "content": content if isinstance(content, str) else
                        _system_text(content, f"{param}.content")})  # fmt: skip
        elif role == "assistant":
            out.append(_assistant(content, f"{param}.content", lenient))
        else:
            out.extend(_user(content, f"{param}.content", lenient))
        origins += [param] * (len(out) - len(origins))
    return in_chat_order(out, origins)


def _blocks(content: list[Any], param: str) -> list[tuple[str, dict[str, Any]]]:
    """Each block with its parameter path; a block that is not an object with a type is a 400."""
    out = []
    for position, block in enumerate(content):
        where = f"{param}[{position}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"Invalid value for '{where}': a content block must be an object with a type.",
                                 param=where)  # fmt: skip
        out.append((where, block))
    return out


def _system_text(blocks: list[Any], param: str) -> str:
    """The text of a system prompt's or a system turn's blocks: text blocks only, as Anthropic takes them (another
    block would be lost without a word)."""
    texts = []
    for where, block in _blocks(blocks, param):
        if block["type"] != "text":
            raise invalid_value(f"{where}.type", f"a system message takes text blocks only, not {block['type']!r}")
        texts.append(_text(block, where))
    return "\n\n".join(text for text in texts if text)


def _assistant(content: str | list[Any], param: str, lenient: bool) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for where, block in _blocks(content, param):
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            call_id, name = _name(block, "id", where), _name(block, "name", where)
            arguments = orjson.dumps(_tool_input(block, where)).decode()
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind not in _SKIPPED and not kind.endswith("_tool_result") and not lenient:
            raise _unsupported(kind, where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_input(block: dict[str, Any], param: str) -> dict[str, Any]:
    """A tool_use block's input: an object, as Anthropic requires (a string or a list is no arguments a chat model
    can be shown)."""
    where = f"{param}.input"
    if "input" not in block:
        raise missing(where)
    arguments = block["input"]
    if not isinstance(arguments, dict):
        raise invalid_value(where, "expected an object")
    return arguments


def _user(content: str | list[Any], param: str, lenient: bool) -> list[dict[str, Any]]:
    """Tool messages for the tool results, then the user message with the rest (when there is any)."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for where, block in _blocks(content, param):
        if block["type"] == "tool_result":
            call_id = _name(block, "tool_use_id", where)
            text, images = _result_content(block.get("content"), f"{where}.content", lenient)
            if block.get("is_error") is True:  # a chat tool message has no such flag: the model reads it instead
                text = f"Error: {text}" if text else "Error."
            results.append({"role": "tool", "tool_call_id": call_id, "content": text})
            parts.extend(images)  # a tool message holds text only: its images follow as the user's
        elif block["type"] not in ("thinking", "redacted_thinking"):
            parts.append(_part(block, where, lenient))
    if not results or parts:
        results.append({"role": "user", "content": _user_content(parts)})
    return results


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts) if len(parts) <= 1 else parts
    return parts


def _part(block: dict[str, Any], param: str, lenient: bool) -> dict[str, Any]:
    try:
        return _chat_part(block, param)
    except Untranslatable:
        if not lenient:
            raise
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if isinstance(source.get("file_id"), str):
            # A file the provider reads by reference (a PDF of many pages): the chat form says so, so the worst-case
            # cost counts it as a fetched document, not as the few characters of its id.
            return {"type": "file", "file": {"file_id": source["file_id"]}}
        what = " ".join(str(x) for x in (source.get("type"), block["type"]) if isinstance(x, str))
        return {"type": "text", "text": f"[{what}]"}


def _chat_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _text(block, param)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _source_url(block, param, what="image")}}
    if kind == "document":
        return _document(block, param)
    if kind == "search_result":
        blocks = _blocks(_list(block.get("content"), f"{param}.content"), f"{param}.content")
        texts = [_text(b, w) for w, b in blocks if b["type"] == "text"]
        title = block.get("title") if isinstance(block.get("title"), str) else ""
        return {"type": "text", "text": "\n".join([title, *texts]).strip()}
    raise _unsupported(kind, param)


def _document(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if source.get("type") == "content":
        content, where = source.get("content"), f"{param}.source.content"
        if isinstance(content, str):  # Anthropic takes a string here too
            return {"type": "text", "text": content}
        texts = [_text(b, w) for w, b in _blocks(_list(content, where), where) if b["type"] == "text"]
        return {"type": "text", "text": "\n".join(texts)}
    file = {"file_data": _source_url(block, param, what="document")}
    if isinstance(block.get("title"), str):
        file["filename"] = block["title"]
    return {"type": "file", "file": file}


def _source_url(block: dict[str, Any], param: str, *, what: str) -> str:
    """An image's or a PDF's source as a URL: a data URL for base64 data."""
    source = block.get("source")
    where = f"{param}.source"
    if not isinstance(source, dict):
        raise InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") if isinstance(source.get("media_type"), str) else "application/pdf"
        return f"data:{media_type};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str) and source["url"]:
        return str(source["url"])
    raise Untranslatable(
        f"Invalid value for '{where}': {'an' if what[0] in 'aeiou' else 'a'} {what} source must be base64 data or a "
        "URL (file ids are not supported).",
        param=where,
    )


def _result_content(content: Any, param: str, lenient: bool) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text, and its images as user content parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for where, block in _blocks(_list(content, param), param):
        part = _part(block, where, lenient)
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
    return "\n".join(texts), images


def _text(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"Invalid value for '{param}.text': expected a string.", param=f"{param}.text")
    return text


def _name(block: dict[str, Any], key: str, param: str) -> str:
    value = block.get(key)
    where = f"{param}.{key}"
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    try:
        return plain_name(value)
    except ValueError:
        raise InvalidRequest(f"Invalid value for '{where}': {NAME_ERROR}.", param=where) from None


def _list(value: Any, param: str = "content") -> list[Any]:
    if isinstance(value, list):
        return value
    if value is None:
        return []
    raise InvalidRequest(f"Invalid value for '{param}': expected a list of blocks.", param=param)


def _unsupported(kind: str, param: str) -> Untranslatable:
    where = f"{param}.type"
    return Untranslatable(f"Invalid value for '{where}': content blocks of type {kind!r} are not supported.",
                          param=where)  # fmt: skip
