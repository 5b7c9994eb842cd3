"""The panel: every analysis model answers the conversation concurrently; failures are values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from openfusion.errors import OpenFusionError, UpstreamError
from openfusion.pipeline.events import PanelAnswer, PanelFailure
from openfusion.upstream.client import UpstreamClient


async def ask_panelist(
    upstream: UpstreamClient, model: str, body: dict[str, Any], *, label: str
) -> PanelAnswer | PanelFailure:
    """One panelist's answer, or its failure; never raises for an upstream problem."""
    started = time.perf_counter()
    try:
        completion = await upstream.complete(model, body)
    except OpenFusionError as exc:
        status = exc.upstream_status if isinstance(exc, UpstreamError) else None
        return PanelFailure(model, exc.message, _ms(started), status_code=status, code=exc.code, label=label)
    if not completion.content.strip():
        return PanelFailure(
            model, f"{model} returned an empty answer", _ms(started), code="empty_completion", label=label
        )
    return PanelAnswer(model, completion.content, _ms(started), completion.usage, completion.model, label=label)


def panel_labels(models: list[str]) -> list[str]:
    """Unique names for the panel: a model that sits twice becomes `model`, `model#2`."""
    seen: dict[str, int] = {}
    labels = []
    for model in models:
        seen[model] = seen.get(model, 0) + 1
        labels.append(model if seen[model] == 1 else f"{model}#{seen[model]}")
    return labels


async def collect_answers(
    upstream: UpstreamClient, *, models: list[str], body: dict[str, Any]
) -> AsyncIterator[PanelAnswer | PanelFailure]:
    """Ask every panelist at once; yield each result as it lands. Leaving early cancels the rest."""
    tasks = [
        asyncio.create_task(ask_panelist(upstream, model, body, label=label), name=f"panel:{label}")
        for model, label in zip(models, panel_labels(models), strict=True)
    ]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
