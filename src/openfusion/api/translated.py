"""Pass-through for a surface its provider does not speak: the chat call, reported as pipeline events.

A Responses (or Messages) request for a plain model goes to its provider as a chat completion;
its chunks (or whole message) come back as `SynthesisChunk` / `SynthesisMessage` events and a
`RunFinished`, so the surface renders them exactly as it renders a fusion answer. The `models`
fallback list is tried in order while the call fails before its answer begins; OpenRouter's own fields (the
client's `plugins`) go to OpenRouter alone, decided for each.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from openfusion.api.deps import AppState
from openfusion.api.passthrough import OPENROUTER_FIELDS, body_for_provider, without_openfusion_fields
from openfusion.errors import UpstreamError, relayed
from openfusion.pipeline.events import Event, RunFinished, SynthesisChunk, SynthesisMessage, SynthesisStarted
from openfusion.protocol import ChatRequest, Usage, parse_usage


async def chat_events(state: AppState, chat: ChatRequest, body: dict[str, Any]) -> tuple[str, AsyncIterator[Event]]:
    """The slug of the model that answers (a fallback, when the first failed) and its answer as events.

    The call is made (and may fail with an HTTP error) before this returns, so the surface knows which model
    answers before its first event.
    """
    payload = without_openfusion_fields(chat, body)
    if not chat.stream:
        model, completion = await _first_success(state, chat, payload)
        return model, _whole(model, completion)
    stack = contextlib.AsyncExitStack()
    try:
        model, chunks = await _open_stream(state, chat, payload, stack)
    except BaseException:
        await stack.aclose()
        raise
    return model, _streamed(model, chunks, stack)


async def _first_success(state: AppState, chat: ChatRequest, payload: dict[str, Any]) -> tuple[str, Any]:
    candidates = chat.candidate_models()
    for position, model in enumerate(candidates):
        try:
            return model, await state.upstream.complete(model, _sent_to(state, model, payload))
        except UpstreamError as exc:
            if position == len(candidates) - 1:
                raise relayed(exc) from None
    raise AssertionError("unreachable: the candidate list is never empty")


async def _open_stream(
    state: AppState, chat: ChatRequest, payload: dict[str, Any], stack: contextlib.AsyncExitStack
) -> tuple[str, AsyncIterator[dict[str, Any]]]:
    candidates = chat.candidate_models()
    for position, model in enumerate(candidates):
        try:
            return model, await stack.enter_async_context(state.upstream.stream(model, _sent_to(state, model, payload)))
        except UpstreamError as exc:
            if position == len(candidates) - 1:
                raise relayed(exc) from None
    raise AssertionError("unreachable: the candidate list is never empty")


def _sent_to(state: AppState, model: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The chat call as the provider of `model` takes it: OpenRouter's own fields (the client's `plugins`) for
    OpenRouter alone."""
    return body_for_provider(state, model, payload, OPENROUTER_FIELDS)


async def _whole(model: str, completion: Any) -> AsyncIterator[Event]:
    yield SynthesisMessage(completion.message, completion.finish_reason)
    yield RunFinished(model=completion.model, usage=completion.usage, fusion={}, slug=model)


async def _streamed(
    model: str, chunks: AsyncIterator[dict[str, Any]], stack: contextlib.AsyncExitStack
) -> AsyncIterator[Event]:
    async with stack:  # leaving early closes the upstream response at once
        yield SynthesisStarted(model)
        usage: Usage | None = None
        reported = model
        async for chunk in chunks:
            reported = chunk.get("model") or reported
            if isinstance(chunk.get("usage"), dict):
                usage = parse_usage(chunk["usage"])
            yield SynthesisChunk(chunk)
        yield RunFinished(model=reported, usage=usage or Usage(), fusion={}, slug=model)
