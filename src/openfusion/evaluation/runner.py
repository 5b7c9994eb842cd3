"""The evaluation run: answers, then one grader call per criterion, bounded and resumable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from openfusion.evaluation.calls import Grader, ask
from openfusion.evaluation.dataset import Criterion, Task
from openfusion.evaluation.grader import grader_messages
from openfusion.evaluation.records import AnswerRecord, GradeRecord, ResultStore, needs_answer, needs_grade
from openfusion.presets import is_fusion_slug

if TYPE_CHECKING:
    from openai import AsyncOpenAI


class Progress(Protocol):
    """Where the run reports each finished (or skipped) call."""

    def advance(self, calls: int = 1) -> None:
        """`calls` more calls are done."""


@dataclass(frozen=True)
class RunSettings:
    """What a run sends: models, grader, repeats, limits, and the fusion plugins."""

    models: Sequence[str]
    grader: str
    grader_temperature: float = 0.0
    grader_max_tokens: int | None = None
    max_tokens: int | None = None
    repeats: int = 1
    concurrency: int = 4
    grader_concurrency: int = 16
    fusion_plugins: list[Any] | None = None  # sent with every fusion answer request (the leak guard)
    retry_failures: bool = False  # redo failed answers and grader calls found in the results file


class _Run:
    def __init__(self, client: AsyncOpenAI, settings: RunSettings, store: ResultStore, progress: Progress) -> None:
        self.client = client
        self.settings = settings
        self.store = store
        self.progress = progress
        self.grader = Grader(
            client,
            model=settings.grader,
            temperature=settings.grader_temperature,
            max_tokens=settings.grader_max_tokens,
        )
        self.answer_slots = asyncio.Semaphore(settings.concurrency)
        self.grade_slots = asyncio.Semaphore(settings.grader_concurrency)

    async def evaluate(self, model: str, task: Task) -> None:
        retry = self.settings.retry_failures
        answer = self.store.answer(model, task.id)
        fresh = needs_answer(answer, retry_failures=retry)
        if fresh:
            async with self.answer_slots:
                answer = await ask(
                    self.client,
                    model=model,
                    task_id=task.id,
                    problem=task.problem,
                    plugins=self.settings.fusion_plugins if is_fusion_slug(model) else None,
                    max_tokens=self.settings.max_tokens,
                )
            self.store.append(answer)
            self.progress.advance()
        if answer is None or not answer.ok:
            # No answer, nothing to grade: the task scores 0 and the failure is reported.
            if fresh:  # the estimate counted this answer's grades
                self.progress.advance(len(task.criteria) * self.settings.repeats)
            return
        todo = [
            (criterion, repeat)
            for criterion in task.criteria
            for repeat in range(self.settings.repeats)
            if needs_grade(
                self.store.grade((model, task.id, answer.digest, criterion.key, repeat, self.settings.grader)),
                retry_failures=retry,
            )
        ]
        if fresh:  # the estimate counted every grade of a new answer; an identical earlier one may have some
            self.progress.advance(len(task.criteria) * self.settings.repeats - len(todo))
        async with asyncio.TaskGroup() as group:
            for criterion, repeat in todo:
                group.create_task(self.grade(answer, task, criterion, repeat))

    async def grade(self, answer: AnswerRecord, task: Task, criterion: Criterion, repeat: int) -> None:
        messages = grader_messages(criterion=criterion, problem=task.problem, answer=answer.content or "")
        async with self.grade_slots:
            reply = await self.grader.judge(messages)
        self.store.append(
            GradeRecord(
                model=answer.model,
                task_id=task.id,
                answer_digest=answer.digest,
                criterion=criterion.key,
                repeat=repeat,
                grader=self.settings.grader,
                met=bool(reply.verdict and reply.verdict.met),  # a grader failure counts as UNMET
                explanation=reply.verdict.explanation if reply.verdict else "",
                error=reply.error,
                cost=reply.cost,
            )
        )
        self.progress.advance()


async def run_evaluation(
    client: AsyncOpenAI, *, tasks: Sequence[Task], settings: RunSettings, store: ResultStore, progress: Progress
) -> None:
    """Answer every task with every model and grade every criterion, skipping what `store` holds."""
    run = _Run(client, settings, store, progress)
    async with asyncio.TaskGroup() as group:
        for model in settings.models:
            for task in tasks:
                group.create_task(run.evaluate(model, task))
