"""with_keepalive: events in order, a keep-alive for every quiet interval, batches, back-pressure, early exit."""

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
            if delay:  # no pause at all otherwise: like chunks decoded from one upstream read
                await asyncio.sleep(delay)
            if isinstance(item, Exception):
                raise item
            log["produced"] = log.get("produced", 0) + 1
            yield item
    finally:
        log["closed"] = True


async def _flat(stream: AsyncIterator[list[Any]]) -> list[Any]:
    return [item async for batch in stream for item in batch]


async def test_events_in_order_with_keepalives_in_the_quiet_intervals() -> None:
    log: dict[str, Any] = {}
    got = await _flat(with_keepalive(_source([(0.35, "a"), (0.35, "b")], log), 0.1))

    assert [item for item in got if item is not None] == ["a", "b"]
    first = got.index("a")
    assert got[:first].count(None) >= 2  # ~3 quiet intervals before "a"
    assert got[first + 1 : got.index("b")].count(None) >= 2  # and again before "b"
    assert log["closed"] is True


async def test_no_keepalive_when_events_keep_coming() -> None:
    batches = [batch async for batch in with_keepalive(_source([(0.01, n) for n in range(10)], {}), 5.0)]
    assert batches == [[n] for n in range(10)]  # each event as it comes, alone: nothing is held back


async def test_events_ready_together_come_as_one_batch() -> None:
    # Ten events produced without a pause (one upstream read carrying ten chunks): the consumer,
    # scheduled once, takes them together.
    batches = [batch async for batch in with_keepalive(_source([(0, n) for n in range(10)], {}), 5.0)]
    assert [n for batch in batches for n in batch] == list(range(10))
    assert len(batches) < 10


async def test_a_failure_of_the_run_reaches_the_consumer() -> None:
    log: dict[str, Any] = {}
    got: list[Any] = []
    with pytest.raises(RuntimeError, match="judge exploded"):
        async for batch in with_keepalive(_source([(0, "a"), (0, RuntimeError("judge exploded"))], log), 5.0):
            got.extend(batch)
    assert got == ["a"]
    assert log["closed"] is True


async def test_a_slow_client_makes_the_run_wait() -> None:
    log: dict[str, Any] = {}
    stream = with_keepalive(_source([(0, n) for n in range(10 * _BUFFERED)], log), 5.0)
    async with contextlib.aclosing(stream):
        first = await anext(stream)
        assert first == list(range(len(first))) and len(first) <= _BUFFERED
        await asyncio.sleep(0.05)  # the run could produce everything meanwhile, were it not held back
        assert log["produced"] <= len(first) + _BUFFERED + 1
        rest = await _flat(stream)
    assert first + rest == list(range(10 * _BUFFERED))


async def test_leaving_early_closes_the_run_at_once() -> None:
    log: dict[str, Any] = {}
    stream = with_keepalive(_source([(0, "a"), (60, "never")], log), 0.05)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == ["a"]
    assert log["closed"] is True  # the run's generator was closed, not left hanging on its 60 s wait
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "fusion-run"]


async def test_first_at_once_gives_what_the_run_yields_before_it_first_waits() -> None:
    log: dict[str, Any] = {}
    stream = with_keepalive(_source([(0, "started"), (0, "also"), (0.05, "later")], log), 5.0, first_at_once=True)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == ["started", "also"]  # one batch: the run's first step, taken at once
        assert await anext(stream) == ["later"]


async def test_first_at_once_gives_nothing_when_the_run_waits_first() -> None:
    stream = with_keepalive(_source([(0.05, "later")], {}), 5.0, first_at_once=True)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == []  # at once, empty: the caller's opening line need not wait
        assert await anext(stream) == ["later"]
