"""Prompt builders for the judge and the synthesizer; the prompt texts are files in `openfusion/prompts`."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import orjson

from openfusion.delimiting import encode_untrusted
from openfusion.pipeline.analysis import Analysis
from openfusion.upstream.web.untrusted import wrap_untrusted

Messages = list[dict[str, Any]]


@cache
def prompt(name: str) -> str:
    """A prompt file's text."""
    return resources.files("openfusion").joinpath("prompts", f"{name}.md").read_text("utf-8").strip()


def read_prompts() -> None:
    """Read every prompt file now (at start-up), so that no request waits on the disk for one."""
    for entry in resources.files("openfusion").joinpath("prompts").iterdir():
        if entry.name.endswith(".md"):
            prompt(entry.name.removesuffix(".md"))


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=32)
def _pieces(template: str) -> tuple[str, ...]:
    """A template split once: text, placeholder name, text, …, text (a prompt is several KiB to scan)."""
    return tuple(_PLACEHOLDER.split(template))


def fill(template: str, **values: str) -> str:
    """Fill `{name}` placeholders in one pass (a value containing `{x}` is not filled again)."""
    pieces = _pieces(template)
    filled = list(pieces)
    for i in range(1, len(pieces), 2):
        filled[i] = values.get(pieces[i], "{" + pieces[i] + "}")
    return "".join(filled)


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def message_text(message: dict[str, Any]) -> str:
    """The text of a message; non-text content parts become a placeholder."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type", "content") if isinstance(part, dict) else "content"
                parts.append(f"[{kind}]")
        return "\n".join(parts)
    if message.get("tool_calls"):
        return "[tool calls: " + orjson.dumps(message["tool_calls"]).decode() + "]"
    return ""


def render_conversation(conversation: Messages) -> str:
    """The conversation as tagged text for the judge."""
    lines = ["<conversation>"]
    for message in conversation:
        role = _attr(str(message.get("role", "user")))
        lines.append(f'<message role="{role}">\n{encode_untrusted(message_text(message))}\n</message>')
    lines.append("</conversation>")
    return "\n".join(lines)


def render_response(model: str, content: str) -> str:
    """One panel answer in its `<response model="...">` wrapper."""
    return f'<response model="{_attr(model)}">\n{encode_untrusted(content)}\n</response>'


def render_responses(answers: list[tuple[str, str]]) -> str:
    """Panel answers, each in its `<response model="...">` wrapper."""
    return "\n\n".join(render_response(model, content) for model, content in answers)


def judge_messages(*, conversation: Messages, answers: list[tuple[str, str]]) -> Messages:
    """The judge's prompt: instructions, then the conversation and the panel answers as data."""
    return judge_prompt(conversation_text=render_conversation(conversation), responses_text=render_responses(answers))


def judge_prompt(*, conversation_text: str, responses_text: str) -> Messages:
    """`judge_messages` from its two parts already rendered (`render_conversation`, `render_responses`)."""
    user = (
        conversation_text
        + "\n\n<responses>\n"
        + responses_text
        + "\n</responses>\n\nReply with the JSON analysis of these responses."
    )
    return [{"role": "system", "content": prompt("judge")}, {"role": "user", "content": user}]


def judge_repair_messages(*, messages: Messages, reply: str, error: str) -> Messages:
    """The one repair attempt: the judge sees its reply and what was wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": fill(prompt("judge_repair"), error=error)},
    ]


def synthesis_messages(
    *,
    conversation: Messages,
    analysis: Analysis | None,
    answers: list[tuple[str, str]],
    sources: list[tuple[str, str]] | None = None,
    rendered_answers: str | None = None,
) -> Messages:
    """The client's conversation with the synthesizer's instructions and the research added to its system prompt.

    `rendered_answers`: `render_responses(answers)` made already (for the judge's prompt), not made again."""
    if analysis is not None:
        analysis_text = "<analysis>\n" + encode_untrusted(analysis.model_dump_json(indent=1)) + "\n</analysis>"
    else:
        analysis_text = prompt("synthesizer_no_analysis")
    if rendered_answers is None:
        rendered_answers = render_responses(answers)
    responses_text = "<responses>\n" + rendered_answers + "\n</responses>"
    if sources:  # titles (and URLs) come from the web: wrapped and encoded like any page
        listed = "\n".join(f"- {title}: {url}" for url, title in sources)
        sources_text = "<sources>\nPages the panel read (cite them by URL where you rely on them):\n"
        sources_text += wrap_untrusted(listed, source="sources") + "\n</sources>"
    else:
        sources_text = ""
    system = fill(prompt("synthesizer"), analysis=analysis_text, responses=responses_text, sources=sources_text)
    return with_system_text(conversation, system)


def with_system_text(conversation: Messages, text: str) -> Messages:
    """The conversation with `text` after the client's own system prompt, in the one system message at its start.

    A second system message ahead of the client's would leave the model two competing preambles (and
    some providers take only one): the client's prompt stays first, ours follows it.
    """
    if not opens_with_system(conversation):
        return [{"role": "system", "content": text}, *conversation]
    first = conversation[0]
    content = first.get("content")
    if isinstance(content, list):
        merged: str | list[Any] = [*content, {"type": "text", "text": text}]
    else:
        merged = f"{content}\n\n{text}" if isinstance(content, str) and content.strip() else text
    return [{**first, "content": merged}, *conversation[1:]]


def opens_with_system(conversation: Messages) -> bool:
    """Whether the conversation's first message is its system prompt (`with_system_text` adds to that one)."""
    return bool(conversation) and conversation[0].get("role") in ("system", "developer")
