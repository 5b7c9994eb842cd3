"""Panel text as it is written: a panelist's call streamed, its deltas handed on, its answer whole at the end.

Only runs whose client shows panel progress ask for this (the Responses API's `panel.delta`
events); chat runs keep the plain non-streamed calls. A provider that reports no usage in streams is
still asked without streaming, so its usage (and cost) stays known.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from openfusion.pipeline import sampling
from openfusion.pipeline.events import PanelDelta
from openfusion.pipeline.sampling import SamplingMemory
from openfusion.pipeline.synthesize import MessageAccumulator
from openfusion.protocol import Usage, parse_usage
from openfusion.upstream.client import Completion, UpstreamClient


@dataclass(frozen=True)
class PanelDeltas:
    """Where one panelist's deltas go: its label, and the run's queue of deltas."""

    label: str
    queue: asyncio.Queue[PanelDelta]

    def put(self, text: str, *, reasoning: bool = False) -> None:
        self.queue.put_nowait(PanelDelta(self.label, text, reasoning))


async def complete_streaming(
    upstream: UpstreamClient, model: str, payload: dict[str, Any], deltas: PanelDeltas, *, memory: SamplingMemory
) -> tuple[Completion, list[str]]:
    """One panel call, streamed when its provider reports usage in streams; the whole completion either way,
    and the sampling parameters the model refused (stepped down as for any call)."""
    if not upstream.registry.resolve(model).provider.config.stream_usage:
        return await sampling.complete(upstream, model, payload, memory=memory)
    accumulator = MessageAccumulator()
    usage: Usage | None = None
    reported = model
    async with contextlib.AsyncExitStack() as stack:
        chunks, dropped = await sampling.open_stream(upstream, model, payload, memory=memory, stack=stack)
        async for chunk in chunks:
            accumulator.feed(chunk)
            reported = chunk.get("model") or reported
            if isinstance(chunk.get("usage"), dict):
                usage = parse_usage(chunk["usage"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                if isinstance(reasoning, str) and reasoning:
                    deltas.put(reasoning, reasoning=True)
                if isinstance(delta.get("content"), str) and delta["content"]:
                    deltas.put(delta["content"])
    completion = Completion(
        model=reported,
        message=accumulator.message(),
        finish_reason=accumulator.finish_reason,
        usage=usage or Usage(),
        usage_reported=usage is not None,
    )
    return completion, dropped
