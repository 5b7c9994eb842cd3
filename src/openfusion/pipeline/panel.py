"""The panel: every analysis model answers concurrently; failures are values; a deadline bounds the wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from openfusion.errors import OpenFusionError, UpstreamError
from openfusion.pipeline import sampling
from openfusion.pipeline.events import PanelAnswer, PanelDeadline, PanelDelta, PanelFailure
from openfusion.pipeline.panel_stream import PanelDeltas, complete_streaming
from openfusion.pipeline.prompts import Messages
from openfusion.pipeline.research import NO_RESEARCH, ResearchPlan, answer_with_research
from openfusion.pipeline.sampling import SamplingMemory
from openfusion.protocol import Usage, sum_usage
from openfusion.upstream.client import Completion, UpstreamClient
from openfusion.upstream.encoded import EncodedJSON
from openfusion.upstream.stage import stage_limit
from openfusion.upstream.trace import role


async def ask_panelist(
    upstream: UpstreamClient,
    model: str,
    body: dict[str, Any],
    *,
    label: str,
    timeout_s: float,
    research: ResearchPlan = NO_RESEARCH,
    memory: SamplingMemory | None = None,
    deltas: PanelDeltas | None = None,
    sent_messages: EncodedJSON | None = None,
) -> PanelAnswer | PanelFailure:
    """One panelist's answer (after its research, if any), or its failure; never raises for an upstream problem.

    `sent_messages`: the body's messages already serialized (shared by the panel), sent in their place as long as the
    conversation is the body's own (not once research has added to it).
    """
    started = time.perf_counter()
    billed: list[Usage] = []  # every completion's usage, kept when a later step fails
    dropped: list[str] = []  # sampling parameters the model refused
    memory = memory or SamplingMemory()
    conversation = body["messages"]

    async def call(messages: Messages, tools: list[dict[str, Any]] | None, choice: str | None) -> Completion:
        sent = sent_messages if sent_messages is not None and messages is conversation else messages
        request = {**body, "messages": sent, "tools": tools, "tool_choice": choice}
        if deltas is not None:
            completion, left_out = await complete_streaming(upstream, model, request, deltas, memory=memory)
        else:
            completion, left_out = await sampling.complete(upstream, model, request, memory=memory)
        dropped[:] = sampling.names([*dropped, *left_out])
        return completion

    def failed(message: str, **details: Any) -> PanelFailure:
        return PanelFailure(model, message, _ms(started), label=label, usage=_spent(billed), dropped=dropped, **details)

    try:
        async with stage_limit(timeout_s):
            with role("panel"):
                done = await answer_with_research(call, messages=conversation, plan=research, usages=billed)
    except TimeoutError:
        return failed(f"{model} did not answer within panel_timeout_s ({timeout_s:g} s)", code="timeout")
    except OpenFusionError as exc:
        status, cause = (exc.upstream_status, exc.cause) if isinstance(exc, UpstreamError) else (None, None)
        return failed(exc.message, status_code=status, code=exc.code, cause=cause)
    completion = done.completion
    if not completion.content.strip():
        return failed(f"{model} returned an empty answer", code="empty_completion")
    return PanelAnswer(
        model,
        completion.content,
        _ms(started),
        sum_usage(done.usages),
        completion.model,
        label=label,
        research=done.log,
        dropped=dropped,
    )


def panel_labels(models: list[str]) -> list[str]:
    """Unique names for the panel: a model that sits twice becomes `model`, `model#2`."""
    seen: dict[str, int] = {}
    labels = []
    for model in models:
        seen[model] = seen.get(model, 0) + 1
        labels.append(model if seen[model] == 1 else f"{model}#{seen[model]}")
    return labels


async def collect_answers(
    upstream: UpstreamClient,
    *,
    models: list[str],
    body: dict[str, Any],
    timeout_s: float,
    deadline_s: float | None = None,
    min_successful: int = 1,
    research: ResearchPlan = NO_RESEARCH,
    memory: SamplingMemory | None = None,
    stream_deltas: bool = False,
) -> AsyncIterator[PanelAnswer | PanelFailure | PanelDeadline | PanelDelta]:
    """Ask every panelist at once and yield each result as it lands.

    Once `deadline_s` has passed and at least `min_successful` answers are in, the stragglers are
    cancelled and reported as timeouts. Leaving early cancels every call still running. With
    `stream_deltas`, the panelists' text comes as PanelDelta events while they write, each before
    its panelist's result.
    """
    started = time.perf_counter()
    queue: asyncio.Queue[PanelDelta] | None = asyncio.Queue() if stream_deltas else None
    # The conversation is the same for every panelist, and the largest part of each request: serialized once.
    shared = EncodedJSON(body["messages"]) if len(models) > 1 else None
    running: dict[asyncio.Task[PanelAnswer | PanelFailure], tuple[str, str]] = {
        asyncio.create_task(
            ask_panelist(upstream, model, body, label=label, timeout_s=timeout_s, research=research, memory=memory,
                         deltas=PanelDeltas(label, queue) if queue is not None else None, sent_messages=shared),
            name=f"panel:{label}",
        ): (model, label)
        for model, label in zip(models, panel_labels(models), strict=True)
    }  # fmt: skip
    answered = 0
    try:
        while running:
            elapsed = time.perf_counter() - started
            past_deadline = deadline_s is not None and elapsed >= deadline_s
            if past_deadline and answered >= min_successful:
                break
            wait = None if deadline_s is None or past_deadline else deadline_s - elapsed
            if queue is None:
                done, _ = await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            else:
                done, taken = await _wait_or_delta(running, queue, wait)
                if taken is not None:
                    yield taken
                while not queue.empty():  # a panelist's text before its result
                    yield queue.get_nowait()
            for task in done:
                del running[task]
                result = task.result()
                answered += isinstance(result, PanelAnswer)
                yield result
        if running:
            assert deadline_s is not None
            yield PanelDeadline(
                deadline_s=deadline_s, answered=answered, dropped=[label for _, label in running.values()]
            )
            for task, (model, label) in list(running.items()):
                task.cancel()
                message = f"{model} was still running at panel_deadline_s ({deadline_s:g} s): cancelled"
                yield PanelFailure(model, message, _ms(started), code="timeout", label=label)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _wait_or_delta(
    running: dict[asyncio.Task[PanelAnswer | PanelFailure], tuple[str, str]],
    queue: asyncio.Queue[PanelDelta],
    wait_s: float | None,
) -> tuple[set[asyncio.Task[PanelAnswer | PanelFailure]], PanelDelta | None]:
    """Wait until a panelist finishes or writes something: the finished tasks, and the delta taken (if one was)."""
    if not queue.empty():
        return {task for task in running if task.done()}, None
    arrival = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait([*running, arrival], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        arrival.cancel()
    taken = arrival.result() if arrival.done() and not arrival.cancelled() else None
    return {task for task in running if task.done()}, taken


def _spent(usages: list[Usage]) -> Usage | None:
    return sum_usage(usages) if usages else None


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
