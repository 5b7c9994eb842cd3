"""The `openrouter:fusion` output item and its progress events, in OpenRouter's names and fields."""

from __future__ import annotations

from typing import Any

from openfusion.errors import OpenFusionError
from openfusion.pipeline.citations import merge_sources
from openfusion.pipeline.events import (
    JudgeOutcome,
    JudgeStarted,
    PanelAnswer,
    PanelDelta,
    PanelFailure,
    PanelistDone,
)
from openfusion.pipeline.panel import panel_labels
from openfusion.pipeline.run import panel_failed

_PREFIX = "response.fusion_call"


class FusionItem:
    """One fusion run as an output item: progress events as it goes, the tool result when it is done."""

    def __init__(self, item_id: str, index: int, models: list[str]) -> None:
        self.id = item_id
        self.index = index
        self.labels = panel_labels(models)
        self.results: list[PanelAnswer | PanelFailure] = []
        self.judges: list[JudgeOutcome] = []
        self.done = False
        self.status = "in_progress"
        self.result: dict[str, Any] = {}

    def item(self) -> dict[str, Any]:
        """The item as it stands; `content: []` keeps SDKs that expect it on every item happy."""
        return {"type": "openrouter:fusion", "id": self.id, "status": self.status, "content": [], **self.result}

    def started(self) -> list[tuple[str, dict[str, Any]]]:
        """The run began: in progress, and each panelist added."""
        events = [(f"{_PREFIX}.in_progress", self._where())]
        events += [(f"{_PREFIX}.panel.added", {**self._where(), "model": label}) for label in self.labels]
        return events

    def progress(
        self, event: PanelDelta | PanelistDone | JudgeStarted | JudgeOutcome
    ) -> list[tuple[str, dict[str, Any]]]:
        """A panelist wrote or finished, or the analyst started or finished."""
        where = self._where()
        if isinstance(event, PanelDelta):
            kind = "panel.reasoning.delta" if event.reasoning else "panel.delta"
            return [(f"{_PREFIX}.{kind}", {**where, "model": event.label, "delta": event.delta})]
        if isinstance(event, PanelistDone):
            result = event.result
            self.results.append(result)
            name = result.label or result.model
            if isinstance(result, PanelAnswer):
                return [(f"{_PREFIX}.panel.completed", {**where, "model": name, "content": result.content})]
            # `message`, where OpenRouter's event names it `error`: openai-python ends any stream at an event whose
            # top-level `error` is set (APIError), and one panelist failing must not end the answer.
            failed = {**where, "model": name, "message": result.message}
            if result.status_code is not None:
                failed["status_code"] = result.status_code
            return [(f"{_PREFIX}.panel.failed", failed)]
        if isinstance(event, JudgeStarted):
            # `judge_model` is OpenRouter's deprecated alias of `analyst_model`, kept for older clients.
            return [(f"{_PREFIX}.analysis.in_progress", {**where, "analyst_model": event.model,
                                                          "judge_model": event.model})]  # fmt: skip
        self.judges.append(event)
        if event.analysis is None:
            return []
        return [(f"{_PREFIX}.analysis.completed", {**where, "analysis": event.analysis.model_dump()})]

    def finish(self, error: OpenFusionError | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The run is over: the item carries the tool result (or why there is none)."""
        self.done = True
        answers = [r for r in self.results if isinstance(r, PanelAnswer)]
        failures = [r for r in self.results if isinstance(r, PanelFailure)]
        if error is None and not answers and self.results:  # tool mode: the panel failed, the answer goes on
            error = panel_failed(failures, answers, 1)
        result: dict[str, Any] = {}
        analysis = next((j.analysis for j in reversed(self.judges) if j.analysis is not None), None)
        if analysis is not None:
            result["analysis"] = analysis.model_dump()
        result["responses"] = [{"model": a.label or a.model, "content": a.content} for a in answers]
        if failures:
            result["failed_models"] = [
                {"model": f.model, "error": f.message, **({"status_code": f.status_code} if f.status_code else {})}
                for f in failures
            ]
        logs = [a.research for a in answers] + [j.research for j in self.judges]
        result["sources"] = [{"url": s.url, "title": s.title} for s in merge_sources(log.sources for log in logs)]
        if error is not None:
            result.update(failure_reason=error.code or "unexpected_error", error=error.message)
        self.status = "incomplete" if error is not None else "completed"
        self.result = result
        return [(f"{_PREFIX}.completed", self._where())]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index}
