"""Errors found in the translated chat request, renamed to the parameters the client sent.

A surface translates its request into the internal chat request; what checks that request further on
(fusion plans, guards, scope) names chat parameters: `max_completion_tokens`, `messages[3]`,
`tools[0].function.name`. A client of another dialect never sent those: `ParamNames` maps each back
to the client's own (`max_output_tokens`, `input[2]`, `tools[1].name`), and `renamed` applies it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openfusion.errors import InvalidRequest, OpenFusionError

_HEAD = re.compile(r"^([A-Za-z_]+)(?:\[(\d+)\])?(.*)$")


@dataclass(frozen=True)
class ParamNames:
    """How one translated request names the chat request's parameters."""

    fields: Mapping[str, str] = field(default_factory=dict)  # chat field -> the client's (with what follows kept)
    messages: Sequence[str] = ()  # chat message index -> the client's parameter it came from
    tools: Sequence[int] = ()  # chat tool index -> the client's tool index
    tool_fields: Mapping[str, str] = field(default_factory=dict)  # within a function tool: ".function.name" -> …

    def rename(self, param: str) -> str:
        """The client's name for a chat parameter path (unchanged when the client's is the same)."""
        match = _HEAD.match(param)
        if match is None:
            return param
        head, index, rest = match[1], match[2], match[3]
        if head == "messages" and index is not None:  # a chat message's parts need not be the client's
            known = int(index) < len(self.messages)
            return self.messages[int(index)] if known else self.fields.get(head, head)
        if head == "tools" and index is not None:
            if int(index) >= len(self.tools):
                return head
            for chat, own in self.tool_fields.items():
                if rest.startswith(chat):
                    rest = own + rest[len(chat) :]
                    break
            return f"tools[{self.tools[int(index)]}]{rest}"
        if head == "tool_choice" and rest.startswith(".function.name"):
            return "tool_choice.name" + rest[len(".function.name") :]
        own_head = self.fields.get(head)
        if own_head is None:
            return param
        return own_head + (f"[{index}]" if index is not None else "") + rest


def renamed(error: OpenFusionError, names: ParamNames) -> OpenFusionError:
    """`error` naming the client's parameter instead of the chat one (changed in place)."""
    old = error.param
    if old is None:
        return error
    new = names.rename(old)
    if new != old:
        error.param = new
        error.message = error.message.replace(f"'{old}'", f"'{new}'")
        error.args = (error.message,)
        if isinstance(error, InvalidRequest):
            error.reason = error.reason and error.reason.replace(f"'{old}'", f"'{new}'")
    return error
