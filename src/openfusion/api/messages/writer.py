"""Pipeline events as Anthropic Messages events, and the message they build.

One `MessageWriter` per answer: `start()` gives `message_start`, `render(event)` the events of one
pipeline event, `ping()` a keep-alive, `fail(error)` the `error` event that ends a failed stream.
The same writer builds the non-streamed body, so both forms agree. Content blocks are numbered in
the order they are sent, each started before its first delta and stopped after its last; thinking
deltas only ever go into thinking blocks, each closed by a `signature_delta` as Anthropic's are (Claude
Code drops a thinking block without one; the signature is openfusion's own, see `SIGNATURE_PREFIX`). A
tool call goes out whole once the answer is complete
(start, its input as one `input_json_delta`, stop): a chat stream may still add to an earlier call
after a later one began, and Anthropic's stream has no way to amend a stopped block.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections.abc import Callable
from typing import Any

import orjson

from openfusion.api.blocks import Block, BlockDelta, BlockEvent, BlockStarted, BlockStream
from openfusion.api.messages.errors import error_body
from openfusion.api.messages.request import MessagesRequest
from openfusion.api.messages.tokens import CHARS_PER_TOKEN
from openfusion.errors import OpenFusionError
from openfusion.pipeline.events import Event, RunFinished, SynthesisChunk, SynthesisMessage
from openfusion.protocol import Usage, token_count

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
PING = {"type": "ping"}
# A thinking block's signature: this prefix and a digest of its text. Only Anthropic can sign a block its API
# accepts back, so one signed here is left out of what goes to a provider that speaks Messages (`native`).
SIGNATURE_PREFIX = "openfusion:"


# Blocks written as text: a model's refusal (OpenAI's `refusal`) is a text block, and the message stops with
# stop_reason "refusal".
_TEXT = ("text", "refusal")


def thinking_signature(thinking: str) -> str:
    """openfusion's signature of a thinking block's text."""
    digest = hashlib.blake2b(thinking.encode("utf-8", "surrogatepass"), digest_size=18).digest()
    return SIGNATURE_PREFIX + base64.urlsafe_b64encode(digest).decode()


def new_message_id() -> str:
    """An Anthropic-style message id: `msg_…`."""
    return "msg_" + secrets.token_urlsafe(18)


class MessageWriter:
    """Renders one answer's Messages events and keeps the message up to date."""

    def __init__(self, *, request: MessagesRequest, model: str, input_tokens: int) -> None:
        self.id = new_message_id()
        # The two things the events read of the request, not the request: a stream held open for minutes should not
        # keep the client's whole conversation through its writer.
        self.shows_thinking = request.shows_thinking
        self.stop_sequences = list(request.stop_sequences or [])
        self.model = model
        self.content: list[dict[str, Any]] = []  # by content index
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, Any] = _usage(input_tokens, 0)
        self.report: dict[str, Any] | None = None
        self.finished = False
        self.failed = False
        self._blocks = BlockStream()
        self._indexes: dict[int, int] = {}  # block index -> content index, for blocks sent as they come
        self._calls: list[Block] = []  # tool calls, sent whole at the end

    def start(self) -> list[dict[str, Any]]:
        """The first event: the message, empty, with the input usage as far as it is known."""
        return [{"type": "message_start", "message": self.snapshot()}]

    def render(self, event: Event) -> list[dict[str, Any]]:
        """The Messages events for one pipeline event (often none)."""
        if isinstance(event, SynthesisChunk):
            self._note_stop_sequence(event.chunk)
            return self._block_events(self._blocks.feed(event.chunk))
        if isinstance(event, SynthesisMessage):
            chunk = {"choices": [{"index": 0, "delta": event.message, "finish_reason": event.finish_reason}]}
            self._note_stop_sequence(chunk)
            return self._block_events(self._blocks.feed(chunk))
        if isinstance(event, RunFinished):
            return self._finish(event)
        return []

    def fail(self, error: OpenFusionError) -> list[dict[str, Any]]:
        """The end of a stream that failed after it began: Anthropic's `error` event."""
        self.failed = True
        return [error_body(error)]

    @property
    def finish_reason(self) -> str | None:
        """The chat finish reason of the answer (for the activity record)."""
        return self._blocks.finish_reason

    def snapshot(self) -> dict[str, Any]:
        """The message as it stands."""
        body: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [dict(block) for block in self.content],
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": dict(self.usage),
        }
        if self.report:
            body["fusion"] = self.report
        return body

    def _finish(self, event: RunFinished) -> list[dict[str, Any]]:
        events = self._block_events(self._blocks.close())
        for call in self._calls:
            events += self._tool_use(call)
        self.model = event.slug or self.model  # openfusion's slug, as `message_start` named it in a stream
        self.stop_reason = self._stop_reason()
        self.usage = _final_usage(event, estimate=self.usage["input_tokens"], written=self._written_tokens)
        self.report = event.fusion or None
        self.finished = True
        delta: dict[str, Any] = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        return [*events, {"type": "message_delta", "delta": delta, "usage": dict(self.usage)}, {"type": "message_stop"}]

    def _written_tokens(self) -> int:
        """An estimate of the tokens the answer's blocks hold (for a provider that reported no usage)."""
        size = 0
        for block in self.content:
            value = block.get("text") or block.get("thinking") or block.get("input")
            size += len(value) if isinstance(value, str) else len(orjson.dumps(value)) if value else 0
        return math.ceil(size / CHARS_PER_TOKEN)

    def _stop_reason(self) -> str:
        reason = self._blocks.finish_reason or "stop"
        if self.stop_sequence is not None:
            return "stop_sequence"
        if self._calls and reason == "stop":  # some providers end a turn of tool calls with "stop"
            return "tool_use"
        if any(block.kind == "refusal" for block in self._blocks.blocks):
            return "refusal"
        return _STOP_REASONS.get(reason, "end_turn")

    def _block_events(self, events: list[BlockEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            block = event.block
            if block.kind == "tool_call":
                if isinstance(event, BlockStarted):
                    self._calls.append(block)
                continue
            if block.kind == "reasoning" and not self.shows_thinking:
                continue  # not asked for: a chat model's reasoning stays out of the message
            if isinstance(event, BlockStarted):
                out.append(self._open(block))
            elif isinstance(event, BlockDelta):
                out.append(self._delta(block, event.delta))
            else:
                out += self._close(block)
        return out

    def _open(self, block: Block) -> dict[str, Any]:
        index = len(self.content)
        self._indexes[block.index] = index
        start = {"type": "text", "text": ""} if block.kind in _TEXT else {"type": "thinking", "thinking": "",
                                                                           "signature": ""}  # fmt: skip
        self.content.append(dict(start))
        return {"type": "content_block_start", "index": index, "content_block": start}

    def _delta(self, block: Block, piece: str) -> dict[str, Any]:
        delta = {"type": "text_delta", "text": piece} if block.kind in _TEXT else {"type": "thinking_delta",
                                                                                    "thinking": piece}  # fmt: skip
        return {"type": "content_block_delta", "index": self._indexes[block.index], "delta": delta}

    def _close(self, block: Block) -> list[dict[str, Any]]:
        index = self._indexes[block.index]
        stop = {"type": "content_block_stop", "index": index}
        if block.kind in _TEXT:
            self.content[index]["text"] = block.value()
            return [stop]
        signature = thinking_signature(block.value())
        self.content[index].update(thinking=block.value(), signature=signature)
        delta = {"type": "signature_delta", "signature": signature}
        return [{"type": "content_block_delta", "index": index, "delta": delta}, stop]

    def _tool_use(self, block: Block) -> list[dict[str, Any]]:
        index = len(self.content)
        call_id = block.call_id or "toolu_" + secrets.token_urlsafe(18)
        arguments = _arguments(block.value())
        self.content.append({"type": "tool_use", "id": call_id, "name": block.name, "input": arguments})
        start = {"type": "tool_use", "id": call_id, "name": block.name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": orjson.dumps(arguments).decode()}
        return [
            {"type": "content_block_start", "index": index, "content_block": start},
            {"type": "content_block_delta", "index": index, "delta": delta},
            {"type": "content_block_stop", "index": index},
        ]

    def _note_stop_sequence(self, chunk: dict[str, Any]) -> None:
        """The stop sequence that ended the answer, when the provider names it (vLLM, SGLang)."""
        stops = self.stop_sequences
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason") == "stop":
                matched = choice.get("stop_reason", choice.get("matched_stop"))
                if isinstance(matched, str) and matched in stops:
                    self.stop_sequence = matched


def _arguments(raw: str) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is (a model's broken JSON: an empty one)."""
    try:
        value = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(input_tokens: int, output_tokens: int, *, cache_read: int = 0, cache_written: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_written,
        "cache_read_input_tokens": cache_read,
    }


def _final_usage(event: RunFinished, *, estimate: int, written: Callable[[], int]) -> dict[str, Any]:
    """The answer's usage: the providers' counts (estimates of the input and of what was written while they
    reported none: a llama.cpp server's streams carry no usage), the cost when known. A cache hit's is zero:
    known, not unknown (its replayed chunks still carry the original run's counts). The token details are the run's
    (a fusion's summed over its calls, as its counts are), never those of a chunk the synthesizer sent."""
    usage: Usage = event.usage
    if event.fusion.get("cached") is True:
        return {**_usage(0, 0), "cost": 0.0}
    details = (usage.model_extra or {}).get("prompt_tokens_details") or {}
    read, wrote = token_count(details, "cached_tokens"), token_count(details, "cache_write_tokens")
    # Anthropic's input_tokens leaves out the tokens read from a cache and those written to one (both within a chat
    # provider's prompt_tokens): each is counted on its own.
    prompt = usage.prompt_tokens - read - wrote if usage.prompt_tokens else estimate
    completion = usage.completion_tokens if usage.completion_tokens or usage.prompt_tokens else written()
    body = _usage(max(prompt, 0), completion, cache_read=read, cache_written=wrote)
    if usage.cost is not None:
        body["cost"] = usage.cost
    if event.server_tool_use:
        body["server_tool_use"] = event.server_tool_use
    return body
