"""with_keepalive: events in order, a keep-alive for every quiet interval, back-pressure, early exit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from openfusion.api.fusion_response import _BUFFERED, with_keepalive


async def _source(script: list[tuple[float, Any]], log: dict[str, Any]) -> AsyncIterator[Any]:
    try:
        for delay, item in script:
            await asyncio.sleep(delay)
            if isinstance(item, Exception):
                raise item
            log["produced"] = log.get("produced", 0) + 1
            yield item
    finally:
        log["closed"] = True


async def test_events_in_order_with_keepalives_in_the_quiet_intervals() -> None:
    log: dict[str, Any] = {}
    got = [item async for item in with_keepalive(_source([(0.35, "a"), (0.35, "b")], log), 0.1)]

    assert [item for item in got if item is not None] == ["a", "b"]
    first = got.index("a")
    assert got[:first].count(None) >= 2  # ~3 quiet intervals before "a"
    assert got[first + 1 : got.index("b")].count(None) >= 2  # and again before "b"
    assert log["closed"] is True


async def test_no_keepalive_when_events_keep_coming() -> None:
    got = [item async for item in with_keepalive(_source([(0.01, n) for n in range(10)], {}), 5.0)]
    assert got == list(range(10))


async def test_a_failure_of_the_run_reaches_the_consumer() -> None:
    log: dict[str, Any] = {}
    got: list[Any] = []
    with pytest.raises(RuntimeError, match="judge exploded"):
        async for item in with_keepalive(_source([(0, "a"), (0, RuntimeError("judge exploded"))], log), 5.0):
            got.append(item)
    assert got == ["a"]
    assert log["closed"] is True


async def test_a_slow_client_makes_the_run_wait() -> None:
    log: dict[str, Any] = {}
    stream = with_keepalive(_source([(0, n) for n in range(10 * _BUFFERED)], log), 5.0)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == 0
        await asyncio.sleep(0.05)  # the run could produce everything meanwhile, were it not held back
        assert log["produced"] <= _BUFFERED + 2
        rest = [item async for item in stream]
    assert rest == list(range(1, 10 * _BUFFERED))


async def test_leaving_early_closes_the_run_at_once() -> None:
    log: dict[str, Any] = {}
    stream = with_keepalive(_source([(0, "a"), (60, "never")], log), 0.05)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == "a"
    assert log["closed"] is True  # the run's generator was closed, not left hanging on its 60 s wait
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "fusion-run"]
