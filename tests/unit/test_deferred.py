"""`Deferred`: work a run does while it waits, after what its current step set going, or on demand; once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from openfusion.pipeline.deferred import Deferred


async def test_the_work_runs_after_a_task_the_same_step_started() -> None:
    """A request's body is written by a task the sending step starts after the work was deferred: it goes first."""
    order: list[str] = []

    async def write_body() -> None:
        order.append("body written")

    deferred = Deferred(lambda: order.append("work"))
    deferred.schedule()
    writer = asyncio.create_task(write_body())
    assert order == []  # nothing yet: the step that deferred the work (and sent the request) is still going
    await writer
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == ["body written", "work"]
    assert deferred.result() is None and order == ["body written", "work"]  # not again


async def test_asked_for_first_it_runs_at_once_and_never_again() -> None:
    runs: list[int] = []

    def work() -> int:
        runs.append(1)
        return 42

    deferred = Deferred(work)
    deferred.schedule()
    assert deferred.result() == 42 and runs == [1]
    for _ in range(4):
        await asyncio.sleep(0)
    assert deferred.result() == 42 and runs == [1]


async def test_work_that_failed_in_the_loop_is_logged_and_raises_where_its_result_is_needed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []

    def work() -> str:
        attempts.append(1)
        raise ValueError("broken")

    deferred = Deferred(work)
    deferred.schedule()
    with caplog.at_level(logging.ERROR, logger="openfusion"):
        for _ in range(3):
            await asyncio.sleep(0)
    assert attempts == [1]
    assert "deferred work failed" in caplog.text
    with pytest.raises(ValueError, match="broken"):
        deferred.result()
    assert attempts == [1, 1]


async def test_cancelled_it_runs_only_when_asked() -> None:
    runs: list[int] = []
    deferred = Deferred(lambda: runs.append(1))
    deferred.schedule()
    deferred.cancel()
    for _ in range(4):
        await asyncio.sleep(0)
    assert runs == []
    deferred.result()
    assert runs == [1]


async def test_unscheduled_it_runs_only_when_asked_and_once_run_it_is_not_scheduled_again() -> None:
    runs: list[int] = []
    deferred = Deferred(lambda: runs.append(1))
    for _ in range(4):
        await asyncio.sleep(0)
    assert runs == []
    deferred.result()
    deferred.schedule()
    for _ in range(4):
        await asyncio.sleep(0)
    assert runs == [1]
