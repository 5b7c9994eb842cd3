"""The worker's fetch connections taken in turns fair across client keys, and never lost to a cancelled wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from openfusion.upstream.web.errors import FetchFailed
from openfusion.upstream.web.fetch import Fetcher
from openfusion.upstream.web.fetch_slots import FetchSlots, SharedConnections


async def _hold(connections: SharedConnections, owner: str, got: list[str], done: asyncio.Event) -> None:
    async with connections.turn(owner):
        got.append(owner)
        await done.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_connection_goes_to_the_waiting_key_with_the_fewest_under_way_then_the_longest_waiting() -> None:
    connections = SharedConnections(3)
    got: list[str] = []
    ends = {name: asyncio.Event() for name in ("a1", "a2", "b1")}
    done = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        holding = {name: tasks.create_task(_hold(connections, name[0], got, ends[name])) for name in ends}
        await _settle()
        assert got == ["a", "a", "b"] and connections.busy()
        for owner in ("a", "a", "b", "c", "c"):  # in the order they come: a's first, c's last
            tasks.create_task(_hold(connections, owner, got, done))
            await _settle()
        ends["a1"].set()  # a 1 under way, b 1, c 0: c's
        await _settle()
        ends["b1"].set()  # a 1, b 0, c 1: b's
        await _settle()
        ends["a2"].set()  # a 0, b 1, c 1: a's
        await _settle()
        assert got[3:] == ["c", "b", "a"]
        assert all(task.done() for task in holding.values())
        done.set()  # the rest, as connections come free
    assert sorted(got[6:]) == ["a", "c"]
    assert connections.free == 3 and not connections.busy()


async def test_a_fetch_cancelled_while_it_waits_leaves_the_queue_and_takes_no_connection() -> None:
    connections = SharedConnections(1)
    got: list[str] = []
    first_ends, done = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_hold(connections, "a", got, first_ends))
    await _settle()
    leaving = asyncio.create_task(_hold(connections, "b", got, done))
    staying = asyncio.create_task(_hold(connections, "c", got, done))
    await _settle()
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    first_ends.set()
    await _settle()
    assert got == ["a", "c"]
    done.set()
    await asyncio.gather(first, staying)
    assert connections.free == 1 and not connections.busy()


async def test_a_fetch_cancelled_just_as_it_is_given_a_connection_passes_it_on() -> None:
    """The connection is handed over (the waiter's future resolved) and the fetch is cancelled before it runs
    again, as a time-out or a client leaving can do: the next fetch waiting gets it, and none is lost."""
    connections = SharedConnections(1)
    got: list[str] = []
    done = asyncio.Event()
    first = connections.turn("a")
    await first.__aenter__()
    unlucky = asyncio.create_task(_hold(connections, "b", got, done))
    next_one = asyncio.create_task(_hold(connections, "c", got, done))
    await _settle()
    await first.__aexit__(None, None, None)  # hands the connection to b, whose task has not run since
    assert connections.free == 0
    unlucky.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await unlucky
    await _settle()
    assert got == ["c"]
    done.set()
    await next_one
    assert connections.free == 1 and not connections.busy()


async def test_a_fetch_timing_out_while_it_waits_gives_up_its_place() -> None:
    connections = SharedConnections(1)
    got: list[str] = []
    done = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_hold(connections, "a", got, done))
        await _settle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await _hold(connections, "b", got, done)
        assert connections.busy() and connections.free == 0
        done.set()
    assert got == ["a"] and connections.free == 1 and not connections.busy()


async def test_a_connection_freed_between_a_waiting_fetchs_cancellation_and_its_end_goes_to_the_next() -> None:
    connections = SharedConnections(1)
    got: list[str] = []
    done = asyncio.Event()
    first = connections.turn("a")
    await first.__aenter__()
    leaving = asyncio.create_task(_hold(connections, "b", got, done))
    staying = asyncio.create_task(_hold(connections, "c", got, done))
    await _settle()
    leaving.cancel()  # its wait is cancelled; its task has not run since, so it is still in the queue
    await first.__aexit__(None, None, None)
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    await _settle()
    assert got == ["c"]
    done.set()
    await staying
    assert connections.free == 1 and not connections.busy()


async def test_a_fetch_that_waited_for_a_connection_until_it_timed_out_says_so(
    make_fetcher: Callable[..., Fetcher], site_url: Callable[[str], str]
) -> None:
    connections = SharedConnections(2)
    slots = FetchSlots(request=asyncio.Semaphore(4), key=asyncio.Semaphore(4), connections=connections, owner="a")
    async with connections.turn("b"), connections.turn("c"):
        with pytest.raises(FetchFailed) as failed:
            await make_fetcher(timeout_s=0.2).fetch(site_url("/article"), slots=slots)
    said = "the fetch timed out after 0.2 s waiting for a turn: this server's fetch connections (2) were all in use."
    assert failed.value.message == said
    assert connections.free == 2 and not connections.busy()
