"""The judge's prompt, made while the panel is awaited; its answers' text, shared with the synthesizer's prompt;
the synthesizer's copy of the conversation serialized while the judge is awaited.

The judge's prompt is the conversation rendered as text, then every answer in its wrapper. The conversation is
known before the panel is asked, and each answer as it lands: rendered then, while the slowest panelist is still
awaited, neither sits between the panel's last answer and the judge's request (a coding agent's conversation,
~150 KB, takes ~0.15-0.25 ms to render; each answer is scanned for delimiters). The synthesizer's prompt carries
the same answers' text: it is made once, not again between the judge's answer and the synthesizer's request.
Its request carries the conversation too, after the system message the run writes: that part is serialized while
the judge is awaited (an agent's ~150 KB, ~0.1 ms), and only the system message once the judge has answered.
"""

from __future__ import annotations

import functools
import itertools
import operator

from openfusion.pipeline.deferred import Deferred
from openfusion.pipeline.prompts import (
    Messages,
    judge_prompt,
    opens_with_system,
    render_conversation,
    render_response,
)
from openfusion.upstream.encoded import EncodedJSON, encoded_list

# Passes of the event loop before the conversation is rendered, counted from the step that makes the panel's
# tasks: the first runs the tasks up to their requests, whose bodies aiohttp writes from tasks of its own in the
# second; the third comes after them.
_AFTER_THE_PANEL_REQUESTS = 3
# From the step that asks the judge: the first runs its request's body writer, the second comes after it.
_AFTER_THE_JUDGE_REQUEST = 2
# A conversation whose text for the judge is shorter is serialized with the synthesizer's request: ahead of it, the
# few microseconds moved would cost more than they save (the work's set-up, two loop passes, the list's checks).
_SERIALIZED_AHEAD_FROM = 16 * 1024


class PreparedPrompts:
    """The judge's prompt in parts, each made as soon as what it shows is known."""

    __slots__ = ("_blocks", "_conversation", "_conversation_text", "_responses", "_synthesis_tail")

    def __init__(self, conversation: Messages) -> None:
        self._conversation: Messages | None = conversation  # until the judge is asked
        self._conversation_text: Deferred[str] | None = Deferred(functools.partial(render_conversation, conversation))
        # The synthesizer's messages after its system message, the conversation's, serialized (a long one only).
        self._synthesis_tail: Deferred[tuple[Messages, bytes]] | None = None
        self._blocks: dict[str, tuple[str, str]] = {}  # label -> (the answer's content, its rendered block)
        self._responses: tuple[list[tuple[str, str]], str] | None = None  # the answers last rendered, and their text

    def schedule(self) -> None:
        """Render the conversation once the panel's requests are out (call in the step that starts the panel)."""
        if self._conversation_text is not None:
            self._conversation_text.schedule(_AFTER_THE_PANEL_REQUESTS)

    def answer(self, label: str, content: str) -> None:
        """Render an answer as it lands, while the others are awaited."""
        self._blocks[label] = (content, render_response(label, content))

    def responses_text(self, answers: list[tuple[str, str]]) -> str:
        """`render_responses(answers)`, from the blocks made as the answers landed (any other made now)."""
        if self._responses is not None and self._responses[0] == answers:
            return self._responses[1]
        parts = []
        for label, content in answers:
            block = self._blocks.get(label)
            parts.append(block[1] if block is not None and block[0] is content else render_response(label, content))
        text = "\n\n".join(parts)
        self._responses = (answers, text)
        return text

    def judge_messages(self, answers: list[tuple[str, str]], conversation: Messages) -> Messages:
        """The judge's prompt (`prompts.judge_messages`), from the parts made ahead."""
        rendered = self._conversation_text
        conversation_text = rendered.result() if rendered is not None else render_conversation(conversation)
        return judge_prompt(conversation_text=conversation_text, responses_text=self.responses_text(answers))

    def judge_asked(self) -> None:
        """Serialize the synthesizer's copy of the conversation once the judge's request is out (call in its step),
        if it is long: its text for the judge, rendered in the panel's wait, tells."""
        conversation, self._conversation = self._conversation, None
        rendered = self._conversation_text
        if conversation is None or rendered is None or not rendered.done:
            return
        if len(rendered.result()) < _SERIALIZED_AHEAD_FROM:
            return
        tail = conversation[1:] if opens_with_system(conversation) else conversation
        self._synthesis_tail = Deferred(functools.partial(_encoded_tail, tail))
        self._synthesis_tail.schedule(_AFTER_THE_JUDGE_REQUEST)

    def synthesis_messages(self, messages: Messages) -> Messages | EncodedJSON:
        """The synthesizer's `messages` as its request carries them: the conversation after the system message
        serialized already, if it was (else as they are)."""
        prepared, self._synthesis_tail = self._synthesis_tail, None
        if prepared is None:
            return messages
        tail, encoded = prepared.result()
        if len(messages) != len(tail) + 1 or not all(map(operator.is_, itertools.islice(messages, 1, None), tail)):
            return messages  # not the conversation it serialized
        return EncodedJSON.of_list(messages[:1], encoded)

    def judged(self) -> None:
        """The judge stage is over: the conversation's text is let go of (only the answers' text is read again)."""
        if self._conversation_text is not None:
            self._conversation_text.cancel()
            self._conversation_text = None
        self._blocks = {}


def _encoded_tail(tail: Messages) -> tuple[Messages, bytes]:
    return tail, encoded_list(tail)
