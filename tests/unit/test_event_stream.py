"""The SSE routes' streamed response: its body, its client leaving, its errors and its background task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.background import BackgroundTask

from openfusion.api.event_stream import EventStreamResponse

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "path": "/"}


class Client:
    """The ASGI side of one request: what was sent, and a disconnect to hand over when told."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()
        self.got_body = asyncio.Event()  # some of the body arrived

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message.get("body"):
            self.got_body.set()

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def _body(log: dict[str, Any], parts: list[tuple[float, bytes]]) -> AsyncIterator[bytes]:
    try:
        for delay, part in parts:
            await asyncio.sleep(delay)
            yield part
        log["ended"] = True
    except asyncio.CancelledError:
        log["cancelled"] = True
        raise
    finally:
        log["closed"] = True


def _response(log: dict[str, Any], parts: list[tuple[float, bytes]]) -> EventStreamResponse:
    def background() -> None:
        log["background"] = True

    return EventStreamResponse(_body(log, parts), media_type="text/event-stream", background=BackgroundTask(background))


async def test_the_whole_body_goes_out_then_the_background_task_runs() -> None:
    log: dict[str, Any] = {}
    client = Client()

    await _response(log, [(0, b"a"), (0.01, b"b"), (0, b"c")])(SCOPE, client.receive, client.send)

    assert client.sent[0]["type"] == "http.response.start" and client.sent[0]["status"] == 200
    assert client.body() == b"abc"
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert log == {"ended": True, "closed": True, "background": True}


async def test_the_background_task_runs_in_the_step_that_sent_the_end_of_the_body() -> None:
    """The record closes before the loop's next pass: ahead of anything that pass brings (the next request)."""
    order: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        if message.get("more_body") is False:
            asyncio.get_running_loop().call_soon(order.append, "the loop's next pass")

    async def body() -> AsyncIterator[bytes]:
        yield b"a"

    async def close_the_record() -> None:  # as the routes' background task is: a coroutine that never waits
        order.append("background")

    response = EventStreamResponse(body(), media_type="text/event-stream", background=BackgroundTask(close_the_record))
    await response(SCOPE, Client().receive, send)
    await asyncio.sleep(0)

    assert order == ["background", "the loop's next pass"]


async def test_a_server_that_reports_the_response_complete_as_a_disconnect_does_not_lose_the_background() -> None:
    """uvicorn's receive() answers `http.disconnect` once the body's end is sent: that is no client leaving."""
    log: dict[str, Any] = {}
    client = Client()
    background_runs: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        await client.send(message)
        if message.get("more_body") is False:
            client.leave.set()

    async def close_the_record() -> None:  # one that waits: the "disconnect" comes while it runs
        await asyncio.sleep(0.01)
        background_runs.append("ran")

    response = EventStreamResponse(
        _body(log, [(0, b"a"), (0, b"b")]), media_type="text/event-stream", background=BackgroundTask(close_the_record)
    )
    await response(SCOPE, client.receive, send)

    assert client.body() == b"ab"
    assert log == {"ended": True, "closed": True}
    assert background_runs == ["ran"]  # once


async def test_a_client_that_leaves_cancels_the_body_at_once() -> None:
    log: dict[str, Any] = {}
    client = Client()
    task = asyncio.create_task(_response(log, [(0, b"a"), (60, b"never")])(SCOPE, client.receive, client.send))
    await client.got_body.wait()
    assert client.body() == b"a"

    client.leave.set()
    async with asyncio.timeout(2):
        await task  # ends quietly, long before the body's next part

    assert log == {"cancelled": True, "closed": True, "background": True}
    assert not any(m.get("more_body") is False for m in client.sent)  # no end of body to a client that is gone


async def test_a_body_that_fails_raises_its_error() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise RuntimeError("broken body")

    client = Client()
    with pytest.raises(RuntimeError, match="broken body"):
        await EventStreamResponse(failing())(SCOPE, client.receive, client.send)
    assert client.body() == b"a"


async def test_cancelling_the_request_cancels_its_body_too() -> None:
    log: dict[str, Any] = {}
    client = Client()
    task = asyncio.create_task(_response(log, [(0, b"a"), (60, b"never")])(SCOPE, client.receive, client.send))
    await client.got_body.wait()
    assert client.body() == b"a"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # The body unwound before the request ended, and the request's end (its background task) still ran: once.
    assert log == {"cancelled": True, "closed": True, "background": True}


async def test_headers_can_wait_for_the_first_chunk_and_leave_with_it() -> None:
    client = Client()
    sent_before_first_chunk: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.01)  # the first chunk takes a loop step or more to be ready
        sent_before_first_chunk.extend(m["type"] for m in client.sent)
        yield b": hello\n\n"
        yield b"data: 1\n\n"

    response = EventStreamResponse(body(), media_type="text/event-stream", headers_with_first_chunk=True)
    await response(SCOPE, client.receive, client.send)

    assert sent_before_first_chunk == []  # nothing, not the headers, went out while the body had nothing
    assert [m["type"] for m in client.sent] == ["http.response.start"] + ["http.response.body"] * 3
    assert client.sent[0]["status"] == 200
    assert client.body() == b": hello\n\ndata: 1\n\n"


async def test_by_default_the_headers_leave_before_the_body_is_asked() -> None:
    client = Client()
    sent_before_first_chunk: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        sent_before_first_chunk.extend(m["type"] for m in client.sent)
        yield b"data: 1\n\n"

    await EventStreamResponse(body(), media_type="text/event-stream")(SCOPE, client.receive, client.send)
    assert sent_before_first_chunk == ["http.response.start"]


async def test_an_empty_body_with_headers_waiting_still_answers() -> None:
    client = Client()

    async def body() -> AsyncIterator[bytes]:
        return
        yield b""

    response = EventStreamResponse(body(), media_type="text/event-stream", headers_with_first_chunk=True)
    await response(SCOPE, client.receive, client.send)
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]


# --- keep-alives -----------------------------------------------------------------------------------------------------

BEAT = b": beat\n\n"


def _beating(log: dict[str, Any], parts: list[tuple[float, bytes]], interval: float) -> EventStreamResponse:
    return EventStreamResponse(
        _body(log, parts), media_type="text/event-stream", headers_with_first_chunk=True, keepalive=BEAT,
        keepalive_interval=interval,
    )  # fmt: skip


def _bodies(client: Client) -> list[bytes]:
    return [m["body"] for m in client.sent if m["type"] == "http.response.body"]


async def test_keepalives_go_out_while_the_body_is_silent_and_only_then() -> None:
    log: dict[str, Any] = {}
    client = Client()
    parts = [(0, b"open"), (0.35, b"a"), *[(0.02, b"t") for _ in range(10)], (0.35, b"b")]

    await _beating(log, parts, 0.1)(SCOPE, client.receive, client.send)

    bodies = _bodies(client)
    assert [b for b in bodies if b != BEAT] == [b"open", b"a", *[b"t"] * 10, b"b", b""]
    a, b = bodies.index(b"a"), bodies.index(b"b")
    assert bodies[1:a].count(BEAT) >= 2  # ~3 quiet intervals before "a"
    assert BEAT not in bodies[a : a + 11]  # none while chunks keep coming, 20 ms apart
    assert bodies[a + 11 : b].count(BEAT) >= 2  # and again before "b"
    assert bodies[-1] == b"" and bodies[-2] == b"b"  # none after the end
    assert client.sent[0]["type"] == "http.response.start"  # the headers, before any beat
    assert log == {"ended": True, "closed": True}


async def test_no_keepalive_before_the_headers_leave_nor_after_the_body_ends() -> None:
    client = Client()

    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.25)  # the first chunk comes late: the headers wait for it, and so do the beats
        yield b"open"

    response = EventStreamResponse(
        body(), media_type="text/event-stream", headers_with_first_chunk=True, keepalive=BEAT, keepalive_interval=0.05
    )
    await response(SCOPE, client.receive, client.send)
    await asyncio.sleep(0.2)  # a timer left behind would beat now

    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert _bodies(client) == [b"open", b""]


async def test_a_keepalive_waiting_on_a_slow_client_is_dropped_when_the_body_ends() -> None:
    """A beat whose send waits (the client reads nothing) is one at a time, and the body's end is the last message."""
    client = Client()
    slow = asyncio.Event()
    beats_waiting: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message.get("body") == BEAT:
            beats_waiting.append(1)
            await slow.wait()  # as a send does while the transport is paused
        await client.send(message)

    response = _beating({}, [(0, b"open"), (0.3, b"a")], 0.05)
    await response(SCOPE, client.receive, send)
    await asyncio.sleep(0.1)

    assert beats_waiting == [1]  # five quiet intervals, one beat: the next waits for it
    assert _bodies(client) == [b"open", b"a", b""]  # the waiting beat was cancelled, nothing after the end
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_a_client_that_leaves_stops_the_keepalives() -> None:
    log: dict[str, Any] = {}
    client = Client()
    task = asyncio.create_task(_beating(log, [(0, b"open"), (60, b"never")], 0.05)(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.2)
    client.leave.set()
    await asyncio.wait_for(task, 5)
    sent = len(client.sent)
    await asyncio.sleep(0.2)

    assert log.get("cancelled") is True
    assert BEAT in _bodies(client)
    assert len(client.sent) == sent  # nothing more once the client left


async def test_a_chunk_sent_just_after_the_headers_moves_the_first_keepalive_on_by_one_interval_not_two() -> None:
    """The timer set with the headers finds a chunk sent since: the beat comes an interval after that chunk."""
    loop = asyncio.get_running_loop()
    sent_at: list[tuple[float, bytes]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent_at.append((loop.time(), message["body"]))

    interval = 0.3  # a beat due at 0.3 s after "a"; a timer re-armed from the headers instead would give ~0.57 s
    response = _beating({}, [(0, b"open"), (0.03, b"a"), (0.7, b"b")], interval)
    await response(SCOPE, Client().receive, send)

    chunk = next(at for at, body in sent_at if body == b"a")
    first_beat = next(at for at, body in sent_at if body == BEAT)
    assert 0.9 * interval <= first_beat - chunk < 1.5 * interval  # timers fire late, not early; two intervals: wrong
