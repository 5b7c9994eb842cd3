"""A translated conversation's tool exchanges, put in the order a chat provider takes them.

A chat provider (OpenAI's rule, checked for fusion in `chat_shape`) takes the tool messages answering an assistant
message's calls right after that message, before any other. Other dialects are looser: Anthropic joins consecutive
messages of one role into one turn (a call in the first of two assistant messages is answered in the user turn after
the second; Claude Code puts system turns between them), and a Responses input is a list of items (a message may come
between a function call and its output). Their chat form is put in chat order here: an assistant message with calls
takes in the assistant messages right after it (system messages aside), and the tool messages answering its calls
move up to right after it, past the user and system messages before the next assistant message.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def in_chat_order(messages: list[Message], origins: list[str]) -> tuple[list[Message], list[str]]:
    """The messages (and the parameter each came from) with each assistant message's tool messages right after it.

    A conversation already in that order (every chat conversation a client may send, most of the others) is
    returned as it is.
    """
    if not any(message.get("tool_calls") for message in messages):
        return messages, origins
    pairs = _joined_turns(list(zip(messages, origins, strict=True)))
    ordered: list[tuple[Message, str]] = []
    position = 0
    while position < len(pairs):
        message = pairs[position][0]
        ordered.append(pairs[position])
        position += 1
        calls = {call.get("id") for call in message.get("tool_calls") or () if isinstance(call, dict)}
        if message.get("role") != "assistant" or not calls:
            continue
        end = next((i for i in range(position, len(pairs)) if pairs[i][0].get("role") == "assistant"), len(pairs))
        window = pairs[position:end]
        answers = [pair for pair in window if _answers(pair[0], calls)]
        ordered += answers + [pair for pair in window if not _answers(pair[0], calls)]
        position = end
    return [message for message, _ in ordered], [origin for _, origin in ordered]


def _joined_turns(pairs: list[tuple[Message, str]]) -> list[tuple[Message, str]]:
    """Each assistant message with calls joined with the assistant messages right after it (system ones between them
    stay, after it): one turn, as Anthropic joins them."""
    out: list[tuple[Message, str]] = []
    calling: int | None = None  # the index in `out` of the last assistant message with calls, while it may take more
    for message, origin in pairs:
        role = message.get("role")
        if role == "assistant" and calling is not None:
            out[calling] = (_joined(out[calling][0], message), out[calling][1])
            continue
        if role != "system":
            calling = len(out) if role == "assistant" and message.get("tool_calls") else None
        out.append((message, origin))
    return out


def _joined(first: Message, then: Message) -> Message:
    texts = [text for text in (first.get("content"), then.get("content")) if isinstance(text, str) and text]
    joined: Message = {**first, "content": "\n\n".join(texts) or None}
    joined["tool_calls"] = [*(first.get("tool_calls") or ()), *(then.get("tool_calls") or ())]
    return joined


def _answers(message: Message, calls: set[Any]) -> bool:
    return message.get("role") == "tool" and message.get("tool_call_id") in calls
