"""The progress bar (rich), drawn on stderr so stdout keeps only the plan and the results."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from openfusion.evaluation.errors import MissingDependency


class _Bar:
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, calls: int = 1) -> None:
        self._progress.advance(self._task_id, calls)


@contextmanager
def progress_bar(total: int, description: str = "calls") -> Iterator[_Bar]:
    """A bar of `total` calls; its `advance()` fits the runner's Progress protocol."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        raise MissingDependency("rich", "the progress bar") from None
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))
