"""Chat-completion chunks as output blocks: the translation every non-chat surface shares.

Responses output items and Messages content blocks are both a sequence of blocks — reasoning, text,
refusals, tool calls — each started, filled by deltas, then stopped. `BlockStream` turns the chat chunks the
pipeline and the upstream client speak (streamed deltas, or a whole message as one delta) into that
sequence, so a surface only maps block events to its own wire events.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

# "refusal": a model declining to answer (OpenAI's `refusal`, in place of content).
BlockKind = Literal["reasoning", "text", "refusal", "tool_call"]


@dataclass
class Block:
    """One output block: its kind, the text (or tool arguments) so far, and a tool call's id and name."""

    index: int
    kind: BlockKind
    text: str = ""
    call_id: str = ""
    name: str = ""
    closed: bool = False
    _parts: list[str] = field(default_factory=list, repr=False)

    def add(self, piece: str) -> None:
        self._parts.append(piece)
        if len(self._parts) >= 64:  # long answers stay compact: a str per token costs ~50 bytes
            self._parts = ["".join(self._parts)]

    def value(self) -> str:
        """The block's whole text (tool calls: the arguments)."""
        return self.text + "".join(self._parts)


@dataclass
class BlockStarted:
    block: Block


@dataclass
class BlockDelta:
    block: Block
    delta: str


@dataclass
class BlockStopped:
    block: Block


BlockEvent = BlockStarted | BlockDelta | BlockStopped


class BlockStream:
    """Feeds chat chunks, returns block events; keeps the finish reason, model and annotations seen (the usage is
    the run's, in its `RunFinished`: a chunk's is one call's)."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.annotations: list[dict[str, Any]] = []  # chat-format url_citation annotations
        self._open: Block | None = None  # the text or reasoning block being written
        self._calls: dict[Hashable, Block] = {}  # chat tool-call index (or id, see `_call_key`) -> its block
        self._last_call: Hashable = None  # the key of the tool call a streamed fragment without index or id goes on
        # Tool calls stay open until the answer ends: a provider may interleave the arguments of several.
        self._open_calls: list[Block] = []
        # Text (or reasoning) written while tool calls are open, held until they close: a call's arguments may still
        # come after it, and a stopped block takes no more.
        self._held: list[tuple[BlockKind, str]] = []

    def feed(self, chunk: dict[str, Any]) -> list[BlockEvent]:
        """The block events one chunk (or one whole message as a delta) makes."""
        self.model = chunk.get("model") or self.model
        events: list[BlockEvent] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                self._text("reasoning", reasoning, events)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._text("refusal", refusal, events)
            if isinstance(delta.get("content"), str) and delta["content"]:
                self._text("text", delta["content"], events)
            elif isinstance(delta.get("content"), list):  # content parts: their text
                text = "".join(p.get("text", "") for p in delta["content"] if isinstance(p, dict))
                if text:
                    self._text("text", text, events)
            streamed = "delta" in choice
            for position, call in enumerate(delta.get("tool_calls") or []):
                if isinstance(call, dict):
                    self._tool_call(self._call_key(call, position, streamed), call, events)
            self.annotations.extend(a for a in delta.get("annotations") or [] if isinstance(a, dict))
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return events

    def close(self) -> list[BlockEvent]:
        """Stop every open block (at the end, or before something else is output)."""
        events = self._close_text() + self._close_calls()
        held, self._held = self._held, []
        for kind, piece in held:
            self._text(kind, piece, events)
        return events + self._close_text()

    def _close_text(self) -> list[BlockEvent]:
        block, self._open = self._open, None
        if block is None or block.closed:
            return []
        block.closed = True
        return [BlockStopped(block)]

    def _close_calls(self) -> list[BlockEvent]:
        calls, self._open_calls = self._open_calls, []
        for block in calls:
            block.closed = True
        return [BlockStopped(block) for block in calls]

    def _start(self, kind: BlockKind, events: list[BlockEvent], **fields: str) -> Block:
        events.extend(self._close_text() if kind == "tool_call" else self.close())
        block = Block(index=len(self.blocks), kind=kind, **fields)
        self.blocks.append(block)
        if kind == "tool_call":
            self._open_calls.append(block)
        else:
            self._open = block
        events.append(BlockStarted(block))
        return block

    def _text(self, kind: BlockKind, piece: str, events: list[BlockEvent]) -> None:
        if self._open_calls:
            self._held.append((kind, piece))
            return
        current = self._open
        block = current if current is not None and current.kind == kind else None
        block = block or self._start(kind, events)
        block.add(piece)
        events.append(BlockDelta(block, piece))

    def _call_key(self, call: dict[str, Any], position: int, streamed: bool) -> Hashable:
        """Which tool call a delta's entry belongs to: its `index`; in a whole message, its place in the list.

        Some providers number no streamed calls (Gemini's OpenAI-compatible endpoint sends each call whole, in a
        chunk of its own, every one without `index`): there a new `id` is a new call, and a fragment with neither
        goes on with the call before it.
        """
        index = call.get("index")
        if index is not None or not streamed:
            return index if index is not None else position
        if call.get("id"):
            return ("id", str(call["id"]))
        return self._last_call if self._last_call is not None else position

    def _tool_call(self, key: Hashable, call: dict[str, Any], events: list[BlockEvent]) -> None:
        self._last_call = key
        function = call.get("function") or {}
        block = self._calls.get(key)
        if block is None:
            block = self._start("tool_call", events, call_id=str(call.get("id") or ""), name=function.get("name") or "")
            self._calls[key] = block
        else:
            block.call_id = block.call_id or str(call.get("id") or "")
            block.name = block.name or function.get("name") or ""
        arguments = function.get("arguments") or ""
        if isinstance(arguments, str) and arguments and not block.closed:
            block.add(arguments)
            events.append(BlockDelta(block, arguments))
