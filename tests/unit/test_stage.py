"""A stage's limit, as the calls made under it see it (`openfusion.upstream.stage`)."""

from __future__ import annotations

import asyncio

import pytest

from openfusion.upstream.stage import stage_ends, stage_limit


async def test_a_stage_tells_its_own_task_when_it_ends_and_forgets_it_after() -> None:
    assert stage_ends() is None
    loop = asyncio.get_running_loop()
    before = loop.time()
    async with stage_limit(5):
        ends = stage_ends()
        assert ends is not None and before + 5 <= ends <= loop.time() + 5
        async with stage_limit(1):  # an inner stage ends sooner: its end is the one known inside it
            inner = stage_ends()
            assert inner is not None and inner < ends
        assert stage_ends() == ends
    assert stage_ends() is None


async def test_a_stage_that_runs_out_raises_timeout_and_forgets_its_end() -> None:
    with pytest.raises(TimeoutError):
        async with stage_limit(0.01):
            await asyncio.sleep(1)
    assert stage_ends() is None
    await asyncio.sleep(0.05)  # and its timer is gone: nothing cancels this task later


async def test_no_end_is_known_without_a_limit_or_in_another_task() -> None:
    async with stage_limit(None):
        assert stage_ends() is None
    async with stage_limit(5):
        assert await asyncio.create_task(_ends_seen()) is None  # the stage's limit does not cancel that task


async def _ends_seen() -> float | None:
    return stage_ends()
