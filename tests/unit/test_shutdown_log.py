"""What uvicorn logs about a request task at the end of its shutdown: a cancellation it made, or a real error."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from openfusion.api.shutdown import Drain, ShutdownLog


def _report(exc: BaseException) -> logging.LogRecord:
    """uvicorn's record of an exception that escaped a request."""
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), info)


def _stopping() -> Drain:
    drain = Drain()
    drain.stop()
    return drain


async def test_a_request_uvicorn_cancels_after_the_grace_period_is_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told: list[bool] = []

    async def request() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as exc:  # as uvicorn's run_asgi logs it, in the request's task
            told.append(ShutdownLog(_stopping()).filter(_report(exc)))
            raise

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    task.cancel("Task cancelled, timeout graceful shutdown exceeded")
    with caplog.at_level(logging.WARNING, logger="openfusion"), pytest.raises(asyncio.CancelledError):
        await task
    assert told == [False]  # uvicorn's record with the traceback is not written
    assert [r.getMessage() for r in caplog.records] == [
        "request cancelled at shutdown: still running 2 s after the grace period ended"
    ]
    assert caplog.records[0].levelno == logging.WARNING


@pytest.mark.parametrize("stopping", [True, False])
async def test_a_real_exception_keeps_its_traceback(stopping: bool) -> None:
    record = _report(ValueError("a bug"))
    assert ShutdownLog(_stopping() if stopping else Drain()).filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_a_cancelled_error_no_cancellation_raised_keeps_its_traceback() -> None:
    """A CancelledError that escapes a request whose task nobody cancels is a bug, not the backstop."""
    record = _report(asyncio.CancelledError())
    assert ShutdownLog(_stopping()).filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_the_backstops_cancelling_is_a_warning_once_the_grace_period_is_over() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Cancel %s running task(s), timeout graceful shutdown exceeded",
        (1,), None,
    )  # fmt: skip
    assert ShutdownLog(_stopping()).filter(record)
    assert record.levelname == "WARNING" and record.getMessage().startswith("Cancel 1 running task(s)")


@pytest.mark.parametrize("stopping", [True, False])
def test_a_response_left_unfinished_is_a_warning_only_once_the_grace_period_is_over(
    stopping: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Before it, an app returning with its response unfinished is a bug; after it, a stream the shutdown cut."""
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "ASGI callable returned without completing response.", (), None
    )
    with caplog.at_level(logging.WARNING, logger="openfusion"):
        assert ShutdownLog(_stopping() if stopping else Drain()).filter(record) is not stopping
    told = [r.getMessage() for r in caplog.records]
    assert told == (["response cut short at shutdown: its client was not reading when the grace period ended"]
                    if stopping else [])  # fmt: skip
