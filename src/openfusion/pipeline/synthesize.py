"""The synthesizer: its request, and its stream with fallbacks while nothing has been relayed yet."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from openfusion.errors import OpenFusionError, UpstreamProtocolError, UpstreamTimeout
from openfusion.pipeline import sampling
from openfusion.pipeline.events import SynthesisStarted
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prompts import Messages
from openfusion.pipeline.sampling import SamplingMemory
from openfusion.protocol import ChatRequest, Usage, parse_usage
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.encoded import EncodedJSON
from openfusion.upstream.stage import stage_limit
from openfusion.upstream.trace import role

# Client fields that shape the final answer and so go to the synthesizer as given.
_CLIENT_FIELDS = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "reasoning",
)

_DECLARED = frozenset(ChatRequest.model_fields)  # the others are extra fields, kept as sent


def synthesis_body(request: ChatRequest, plan: FusionPlan, messages: Messages | EncodedJSON) -> dict[str, Any]:
    """The synthesizer call's body (model and stream flags are the upstream client's business); `messages` may be
    serialized already."""
    # Read field by field: a dump of the whole request would copy every message.
    extra = request.model_extra or {}
    body: dict[str, Any] = {}
    for key in _CLIENT_FIELDS:
        value = getattr(request, key) if key in _DECLARED else extra.get(key)
        if value is not None:
            body[key] = value
    body.update(client_tools(request))
    body["messages"] = messages
    body["max_completion_tokens"] = request.max_completion_tokens or request.max_tokens or plan.max_completion_tokens
    return body


def client_tools(request: ChatRequest) -> dict[str, Any]:
    """The client's own function tools and its tool_choice, without fusion's server tool (providers refuse it)."""
    tools = [t for t in request.tools or [] if isinstance(t, dict) and t.get("type") == "function"]
    choice = request.tool_choice
    if isinstance(choice, dict) and choice.get("type") != "function":
        choice = None  # {"type": "openrouter:fusion"} means nothing to a provider
    if not tools:
        return {"tools": None, "tool_choice": None}
    return {"tools": tools, "tool_choice": choice}


class _NoChunks:
    """No chunk: the rest of an answer that never opened, or was closed."""

    def __aiter__(self) -> _NoChunks:
        return self

    async def __anext__(self) -> dict[str, Any]:
        raise StopAsyncIteration


_NO_CHUNKS = _NoChunks()


class SynthesisStream:
    """The synthesizer's chunks (`opening`, then `rest`); the next model is tried while no chunk has been relayed.

    `timeout_s` bounds the time to the first chunk: a streamed answer's first token, or a whole answer
    (asked for when the client does not stream, and relayed as one chunk).
    """

    def __init__(
        self,
        upstream: UpstreamClient,
        *,
        models: list[str],
        body: dict[str, Any],
        timeout_s: float,
        client_streams: bool = True,
        memory: SamplingMemory | None = None,
    ) -> None:
        self._upstream = upstream
        self._memory = memory or SamplingMemory()
        self._models = models
        self._body = body
        self._timeout = timeout_s
        self._client_streams = client_streams
        self.usage = Usage()
        self.usage_known = False  # some servers (llama.cpp) never report usage in a stream
        self.model = models[0]  # the slug that answered
        self.reported_model: str | None = None  # what its upstream called itself
        self.failures: list[tuple[str, str]] = []  # (model, why) for each synthesizer that failed
        self.dropped: list[str] = []  # sampling parameters the answering model refused, left out
        self.rest: AsyncIterator[dict[str, Any]] = _NO_CHUNKS  # the answer's chunks after the first (see `opening`)
        self._open_calls: contextlib.AsyncExitStack | None = None  # the answering synthesizer's stream, once open

    async def opening(self) -> AsyncIterator[SynthesisStarted | dict[str, Any]]:
        """Progress markers, one per synthesizer tried, then the first upstream chunk if it carries choices; the rest
        of the answer is then `rest`, open until the stream's `async with` block ends.

        Only the opening, where a synthesizer may fail over to the next, is a generator of its own: the rest is read
        by its consumer straight from the upstream's chunks, so the answer's tokens cross no level of this class's
        (each costs a token a resumption, ~1.2 k instructions).
        """
        for attempt, model in enumerate(self._models, start=1):
            yield SynthesisStarted(model, attempt)
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with stage_limit(self._timeout):
                        chunks = await self._open(model, stack)
                        first = await anext(chunks)
                except (OpenFusionError, TimeoutError, StopAsyncIteration) as exc:
                    self.failures.append((model, self._error(exc, model).message))
                    if attempt == len(self._models):
                        # Raised as made, not from a local: a frame holding the error it raises is a reference
                        # cycle with the error's traceback, kept (the run with it) until the collector runs.
                        raise self._error(exc, model) from None
                    continue
                self.model = model
                # From here on bytes reach the client: a failure ends the stream, no fallback; so the request
                # body (the whole prompt: conversation, panel answers, analysis) is no longer needed.
                self._body = {}
                self.rest, self._open_calls = chunks, stack.pop_all()  # open until `__aexit__`
                if self.observe(first):
                    yield first
                return

    async def __aenter__(self) -> SynthesisStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Close the answering synthesizer's stream, if one opened, at once: told how its reading ended (an error
        mid-stream is the call's error, the client leaving its cancellation)."""
        calls, self._open_calls = self._open_calls, None
        self.rest = _NO_CHUNKS
        if calls is not None:
            await calls.__aexit__(*exc_info)

    def _error(self, exc: BaseException, model: str) -> OpenFusionError:
        return _as_error(exc, model, self._timeout, streamed=self._client_streams)

    async def _open(self, model: str, stack: contextlib.AsyncExitStack) -> AsyncIterator[dict[str, Any]]:
        # A client that does not stream waits for the whole answer anyway: the synthesizer is asked for it
        # whole (one read, not one wake-up per token), within `synth_timeout_s`, and the next synthesizer is
        # tried if it fails at any point before it is complete. A streaming client gets its tokens as they come.
        if self._client_streams:
            with role("synthesizer"):
                chunks, self.dropped = await sampling.open_stream(
                    self._upstream, model, self._body, memory=self._memory, stack=stack
                )
                return chunks
        return self._complete_as_chunk(model)

    async def _complete_as_chunk(self, model: str) -> AsyncIterator[dict[str, Any]]:
        with role("synthesizer"):
            completion, self.dropped = await sampling.complete(self._upstream, model, self._body, memory=self._memory)
        choice = {"index": 0, "delta": completion.message, "finish_reason": completion.finish_reason}
        if completion.usage_reported:  # taken as parsed: not rendered into the chunk to be parsed again there
            self.usage, self.usage_known = completion.usage, True
        yield {"model": completion.model, "choices": [choice]}

    def observe(self, chunk: dict[str, Any]) -> bool:
        """Note a chunk's model and usage; whether it carries choices (is relayed)."""
        self.reported_model = chunk.get("model") or self.reported_model
        if chunk.get("usage"):
            self.usage = parse_usage(chunk["usage"])
            self.usage_known = True
        return bool(chunk.get("choices"))


def _as_error(exc: BaseException, model: str, timeout_s: float, *, streamed: bool) -> OpenFusionError:
    if isinstance(exc, OpenFusionError):
        return exc
    if isinstance(exc, TimeoutError):
        what = "sent no token" if streamed else "did not answer"
        message = f"{model} {what} within synth_timeout_s ({timeout_s:g} s)"
        return UpstreamTimeout(message, model=model, provider="")
    return UpstreamProtocolError(f"{model} returned an empty stream", model=model, provider="")


class _Text:
    """Text that arrives a token at a time, kept compact: a str object per token costs ~50 bytes of
    overhead, so the pieces are joined every 64 (a 1,200-token answer held ~80 KiB as pieces)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[str] = []

    def append(self, piece: str) -> None:
        self._parts.append(piece)
        if len(self._parts) >= 64:
            self._parts = ["".join(self._parts)]

    def __bool__(self) -> bool:  # whether any piece came, even an empty one
        return bool(self._parts)

    def __str__(self) -> str:
        return "".join(self._parts)


class MessageAccumulator:
    """Builds a whole assistant message from streamed deltas (content, reasoning, tool calls, annotations)."""

    def __init__(self) -> None:
        self.content = _Text()
        self.reasoning = _Text()
        self.refusal = _Text()
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.annotations: list[Any] = []
        self.finish_reason: str | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            delta = choice.get("delta") or {}
            # Called for every relayed chunk: plain lookups, no per-call tuples or empty lists, and `is not None`
            # before an isinstance that would fail (a failing one also looks the value's `__class__` up).
            if isinstance(content := delta.get("content"), str):
                self.content.append(content)
            if (refusal := delta.get("refusal")) is not None and isinstance(refusal, str):
                self.refusal.append(refusal)
            text = delta.get("reasoning") or delta.get("reasoning_content")
            if text is not None and isinstance(text, str):
                self.reasoning.append(text)
            if annotations := delta.get("annotations"):
                self.annotations.extend(annotations)
            if tool_calls := delta.get("tool_calls"):
                for call in tool_calls:
                    self._feed_tool_call(call)

    def _feed_tool_call(self, call: dict[str, Any]) -> None:
        entry = self.tool_calls.setdefault(
            call.get("index", len(self.tool_calls)),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        entry["id"] = call.get("id") or entry["id"]
        entry["type"] = call.get("type") or entry["type"]
        function = call.get("function") or {}
        entry["function"]["name"] += function.get("name") or ""
        entry["function"]["arguments"] += function.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        """The assistant message as a non-streamed response carries it."""
        content = str(self.content)
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not self.tool_calls else None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.reasoning:
            message["reasoning"] = str(self.reasoning)
        if self.refusal:
            message["refusal"] = str(self.refusal)
        if self.annotations:
            message["annotations"] = self.annotations
        return message
