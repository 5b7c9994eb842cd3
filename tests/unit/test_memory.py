"""The heap is trimmed once after a burst of requests, never under a steady load, and never per request."""

from __future__ import annotations

import asyncio

import pytest

from openfusion.memory import BurstTrimmer, malloc_trim


class Readings:
    """Requests in flight as a test scripts them, and the trims they led to."""

    def __init__(self) -> None:
        self.now = 0
        self.trimmed = 0

    def trim(self) -> None:
        self.trimmed += 1


def _trimmer(readings: Readings, *, min_burst: int = 64, settle: int = 1) -> BurstTrimmer:
    return BurstTrimmer(lambda: readings.now, readings.trim, min_burst=min_burst, settle=settle)


def _walk(trimmer: BurstTrimmer, readings: Readings, levels: list[int]) -> list[bool]:
    trims = []
    for level in levels:
        readings.now = level
        trims.append(trimmer.check())
    return trims


def test_a_burst_is_trimmed_once_when_it_is_over() -> None:
    readings = Readings()
    trimmer = _trimmer(readings)
    assert _walk(trimmer, readings, [0, 300, 1000, 900, 400, 260, 3, 0, 0]) == [
        *[False] * 6,
        True,  # 3 in flight: the peak of 1000 is over (a quarter of it or less)
        False,
        False,
    ]
    assert readings.trimmed == 1


def test_the_trim_waits_until_the_burst_has_stayed_over_for_a_while() -> None:
    readings = Readings()
    trimmer = _trimmer(readings, settle=3)
    # the records of a burst are written after its responses: the level must stay down for three readings
    assert _walk(trimmer, readings, [1000, 100, 0, 400, 0, 0, 0, 0]) == [*[False] * 6, True, False]
    assert readings.trimmed == 1


def test_a_burst_that_falls_to_a_quarter_of_its_peak_is_over() -> None:
    readings = Readings()
    trimmer = _trimmer(readings)
    assert _walk(trimmer, readings, [400, 101, 100]) == [False, False, True]


def test_a_steady_load_is_never_trimmed() -> None:
    readings = Readings()
    trimmer = _trimmer(readings)
    # c=50: the level moves by less than a burst, up and down, for as long as it lasts
    _walk(trimmer, readings, [50, 48, 52, 0, 50, 49, 0, 51] * 100)
    assert readings.trimmed == 0


def test_each_burst_is_trimmed_after_its_own_end() -> None:
    readings = Readings()
    trimmer = _trimmer(readings)
    _walk(trimmer, readings, [200, 0, 0, 0])
    _walk(trimmer, readings, [150, 10, 0])
    assert readings.trimmed == 2
    assert trimmer.trims == 2


def test_a_burst_over_while_requests_remain_is_trimmed_then_watched_from_there() -> None:
    readings = Readings()
    trimmer = _trimmer(readings)
    _walk(trimmer, readings, [1000, 200])  # over, though 200 remain
    assert readings.trimmed == 1
    _walk(trimmer, readings, [210, 180, 160])  # those 200 are the level now: no new burst
    assert readings.trimmed == 1
    _walk(trimmer, readings, [20])  # and when they are over too, what they held goes back
    assert readings.trimmed == 2


async def test_the_task_checks_at_its_pace_until_cancelled() -> None:
    readings = Readings()
    trimmer = _trimmer(readings, min_burst=1)
    task = asyncio.create_task(trimmer.run(every_s=0.001))
    readings.now = 10
    while trimmer.trims == 0 and readings.now:
        await asyncio.sleep(0.005)
        readings.now = 0
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert readings.trimmed == 1


def test_malloc_trim_runs_where_the_c_library_has_it() -> None:
    trim = malloc_trim()
    if trim is None:
        pytest.skip("no malloc_trim in this C library")
    blocks = [bytearray(64 * 1024) for _ in range(200)]  # the C heap, grown and freed
    del blocks
    trim()
