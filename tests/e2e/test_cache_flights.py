"""Identical requests at once through the real server: the run they share, given back however a response ends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.app import create_app
from openfusion.settings import Settings

from .conftest import TRIO, judge_script
from .processes import provider_config, serve

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
BODY = {"model": "fusion/cached", "messages": QUESTION}
# Long enough that a request stuck behind a run nobody makes (it waits all of it) stands out from one that runs (well
# under a second on an idle machine, a few seconds on a loaded one): the bounds below are half of it.
WAIT_S = 20.0
CACHE = "X-Openfusion-Cache"


@pytest.fixture
def start(
    upstream: FakeUpstream, make_settings: Callable[..., Settings], presets_dir: Path, tmp_path: Path
) -> Callable[..., AbstractContextManager[str]]:
    """Start openfusion with `fusion/cached` (the trio, cached for a minute), activity in SQLite; yields its URL."""
    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")

    @contextmanager
    def run(**overrides: Any) -> Iterator[str]:
        overrides.setdefault("activity", {"path": tmp_path / "activity.sqlite3", "flush_interval_s": 0.05})
        with serve_in_thread(create_app(make_settings(**overrides), environ={"FAKE_KEY": "sk-fake"})) as url:
            yield url

    return run


def script_degraded_run(upstream: FakeUpstream, *, synth_delay_s: float) -> None:
    """Every run degrades (panelist `a` fails), so none is kept; the synthesizer takes `synth_delay_s`."""
    upstream.script("a", Script(status=400, error_message="bad request"))
    upstream.script("b", Script(content="b says blue."))
    upstream.script("c", Script(content="c says blue."))
    upstream.script("judge", judge_script())
    upstream.script("synth", Script(content="Rayleigh scattering.", delay_s=synth_delay_s))


async def until(condition: Callable[[], bool], *, timeout_s: float = 60.0) -> None:
    """Wait until `condition()` holds (checked every 20 ms); the deadline only bounds a hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


def streamed_records(path: Path) -> list[tuple[str, int | None, str | None]]:
    """(status, status_code, failure_reason) of each streamed request in the SQLite activity store."""
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=5) as db:
        query = "SELECT status, status_code, failure_reason FROM generations WHERE streamed = 1"
        return [tuple(row) for row in db.execute(query)]


def running(upstream: FakeUpstream) -> bool:
    """Whether the first run is still under way: its synthesizer has not answered."""
    return all(call.finished is None for call in upstream.calls_for("synth"))


async def leave_while_waiting(client: httpx.AsyncClient, url: str, upstream: FakeUpstream) -> None:
    """A streamed identical request whose client gives up while the first runs: once its stream has begun (the
    server has it, waiting), it closes the connection."""
    async with client.stream("POST", f"{url}/v1/chat/completions", json={**BODY, "stream": True}) as response:
        assert response.status_code == 200
        await anext(response.aiter_raw())  # the stream began: the server has the request, waiting for the run
        assert running(upstream)  # the client really leaves before the answer
    # Leaving the block unread closes the connection.


async def leave(request: asyncio.Task[Any]) -> None:
    """The client of `request` gives up: its connection is closed."""
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.05)  # a pass of this loop: the socket's close, scheduled by the cancellation, is done


async def a_waiter_leaves_then_one_more(url: str, upstream: FakeUpstream, activity: Path) -> float:
    """A run that is not kept, a streamed waiter whose client leaves meanwhile, then one more identical request:
    how long that last one took."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=BODY))
        await until(lambda: bool(upstream.calls_for("b")))  # the first request has the run
        await leave_while_waiting(client, url, upstream)
        answer = await first
        assert answer.headers["x-openfusion-cache"] == "miss"
        assert answer.json()["fusion"]["panel"][0]["status"] == "error"  # degraded: the run was not kept
        await until(lambda: len(streamed_records(activity)) == 1)  # the server is done with the waiter that left
        started = time.monotonic()
        last = await client.post(f"{url}/v1/chat/completions", json=BODY)
        assert last.status_code == 200 and last.headers["x-openfusion-cache"] == "miss"
        return time.monotonic() - started


def test_a_waiter_whose_client_left_gives_the_run_back(upstream: FakeUpstream, start: Any, tmp_path: Path) -> None:
    """The streamed waiter takes the run once the first is not kept, but its body never starts: the run must still
    be given back, or every later identical request waits `wait_s` for a run nobody makes."""
    script_degraded_run(upstream, synth_delay_s=3.0)  # the waiter's client leaves within it, on a loaded machine too
    activity = tmp_path / "activity.sqlite3"
    with start(cache={"wait_s": WAIT_S}) as url:
        took = asyncio.run(a_waiter_leaves_then_one_more(url, upstream, activity))
    assert took < WAIT_S / 2, f"the last request waited {took:.1f} s for a run nobody made"
    assert len(upstream.calls_for("synth")) == 2  # the first and the last: the waiter that left made no call


async def a_waiter_leaves(url: str, upstream: FakeUpstream, activity: Path) -> list[tuple[str, int | None, str | None]]:
    """A streamed identical request whose client leaves while the first runs: its activity record."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=BODY))
        await until(lambda: bool(upstream.calls_for("b")))  # the first request has the run
        await leave_while_waiting(client, url, upstream)
        assert (await first).status_code == 200
        await until(lambda: len(streamed_records(activity)) == 1)
        return streamed_records(activity)


@pytest.mark.parametrize("kept", [True, False], ids=["hit", "not-kept"])
def test_a_waiter_whose_client_left_is_recorded_as_cancelled(
    upstream: FakeUpstream, start: Any, tmp_path: Path, kept: bool
) -> None:
    """Not as a 200 `ok` (whether the run it waited for was kept or not); it got its response's start, the wait
    being the stream's, so its status is the 200 it got."""
    script_degraded_run(upstream, synth_delay_s=3.0)  # the waiter's client leaves within it, on a loaded machine too
    if kept:
        upstream.script("a", Script(content="a says blue."))
    with start(cache={"wait_s": WAIT_S}) as url:
        records = asyncio.run(a_waiter_leaves(url, upstream, tmp_path / "activity.sqlite3"))
        metrics = httpx.get(f"{url}/metrics", timeout=60).text
    assert records == [("cancelled", 200, "cancelled")]
    assert 'openfusion_requests_total{route="fusion/cached",status="cancelled"} 1.0' in metrics
    assert len(upstream.calls_for("synth")) == 1  # the waiter that left made no run


def in_flight(url: str) -> float:
    """The server's `openfusion_requests_in_flight`."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("openfusion_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no openfusion_requests_in_flight in /metrics")


def records(activity: Path) -> list[tuple[str, int | None, str | None]]:
    """(status, status_code, failure_reason) of each request in the SQLite activity store."""
    if not activity.exists():
        return []
    with sqlite3.connect(activity, timeout=5) as db:
        return [tuple(row) for row in db.execute("SELECT status, status_code, failure_reason FROM generations")]


async def a_plain_waiter_leaves(url: str, upstream: FakeUpstream, activity: Path) -> bool:
    """A plain identical request whose client gives up while the first runs: whether the server was done with it
    (recorded) while the first was still running."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=BODY))
        await until(lambda: bool(upstream.calls_for("b")))  # the first request has the run
        waiter = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=BODY))
        await until(lambda: in_flight(url) == 2)  # the server has it, waiting for the first run
        assert running(upstream)
        await leave(waiter)  # the client really leaves, before the answer
        await until(lambda: first.done() or records(activity) == [("cancelled", None, "cancelled")])
        ended_meanwhile = not first.done() and records(activity) == [("cancelled", None, "cancelled")]
        assert (await first).status_code == 200
        return ended_meanwhile


def test_a_plain_waiter_whose_client_left_stops_waiting(upstream: FakeUpstream, start: Any, tmp_path: Path) -> None:
    """A non-streamed request waiting for an identical run went on waiting (up to wait_s, holding its place under
    the key's concurrency limit) once its client had left. It ends then, recorded as cancelled (while the first run,
    6 s long, goes on)."""
    script_degraded_run(upstream, synth_delay_s=6.0)
    with start(cache={"wait_s": WAIT_S}) as url:
        assert asyncio.run(a_plain_waiter_leaves(url, upstream, tmp_path / "activity.sqlite3"))
    assert len(upstream.calls_for("synth")) == 1  # the waiter that left made no run


async def first_then_three(url: str, upstream: FakeUpstream) -> list[httpx.Response]:
    """One request, then three identical ones while it runs."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=BODY))
        await until(lambda: bool(upstream.calls_for("b")))  # the first request has the run
        waiters = [client.post(f"{url}/v1/chat/completions", json=BODY) for _ in range(3)]
        return await asyncio.gather(first, *waiters)


def test_requests_that_waited_for_a_run_not_kept_run_together(upstream: FakeUpstream, start: Any) -> None:
    """Not one after another (the k-th waiting for k-1 whole runs): nothing was kept, so nothing is to be had by
    waiting for each other."""
    script_degraded_run(upstream, synth_delay_s=1.0)
    with start(cache={"wait_s": 30.0}) as url:
        answers = asyncio.run(first_then_three(url, upstream))
    assert [a.headers["x-openfusion-cache"] for a in answers] == ["miss"] * 4
    assert all(a.json()["fusion"]["panel"][0]["status"] == "error" for a in answers)  # degraded: none was kept
    first, *waiters = sorted(upstream.calls_for("synth"), key=lambda call: call.started)
    assert len(waiters) == 3 and first.finished is not None
    assert all(call.started >= first.finished for call in waiters)  # they did wait for the first run
    ends = [call.finished for call in waiters if call.finished is not None]
    assert max(call.started for call in waiters) < min(ends)  # then all ran at the same time


KEEPALIVE = b": OPENFUSION PROCESSING\n\n"
SURFACES = {  # path, body, first bytes, keep-alive
    "chat": ("/v1/chat/completions", BODY, KEEPALIVE, KEEPALIVE),
    "responses": ("/v1/responses", {"model": "fusion/cached", "input": "Why is the sky blue?"},
                  b"event: response.created\n", KEEPALIVE),
    "messages": ("/v1/messages", {**BODY, "max_tokens": 500}, b"event: message_start\n", b"event: ping\n"),
}  # fmt: skip


async def stream_while_the_first_runs(url: str, upstream: FakeUpstream, path: str, body: dict[str, Any]) -> Any:
    """One request, then an identical streamed one while it runs: (its cache header, its first bytes, whether the
    first run was still under way when they came, the rest of its body)."""
    async with httpx.AsyncClient(timeout=30) as client:
        first = asyncio.create_task(client.post(f"{url}{path}", json=body))
        await until(lambda: bool(upstream.calls_for("b")))  # the first request has the run
        async with client.stream("POST", f"{url}{path}", json={**body, "stream": True}) as response:
            chunks = response.aiter_raw()
            opening = await anext(chunks)
            running = all(call.finished is None for call in upstream.calls_for("synth"))
            rest = b"".join([chunk async for chunk in chunks])
        assert (await first).status_code == 200
        return response.headers["x-openfusion-cache"], opening, running, rest


@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_stream_that_waits_for_an_identical_run_begins_at_once(
    upstream: FakeUpstream, start: Any, surface: str
) -> None:
    """Its headers and first bytes go out as a fresh run's do, the wait being the stream's (with keep-alives): not
    nothing at all until the run it waits for has ended, which a proxy's idle timeout would cut."""
    script_degraded_run(upstream, synth_delay_s=1.5)
    upstream.script("a", Script(content="a says blue."))  # a clean run: kept, the waiter's answer
    path, body, first_bytes, keepalive = SURFACES[surface]
    with start(cache={"wait_s": 30.0}, keepalive_interval_s=0.2) as url:
        header, opening, running, rest = asyncio.run(stream_while_the_first_runs(url, upstream, path, body))
    assert running, "the stream's first bytes came only once the run it waited for had ended"
    assert header == "pending" and opening.startswith(first_bytes)
    after_opening = (opening + rest).split(b"\n\n", 1)[1]
    assert keepalive in after_opening  # then keep-alives while it waits (the run it waits for takes 1.5 s)
    assert b"Rayleigh scattering." in rest and len(upstream.calls) == 5  # then the first run's answer: a hit


async def leave_during_a_slow_lookup(
    url: str, activity: Path, looking: threading.Event, left: threading.Event
) -> tuple[list[tuple[str, int | None, str | None]], int]:
    """A streamed request whose client leaves during its cache lookup (`looking` it, `left` once gone), then one
    more: (the activity of streamed requests, the status of the last request)."""
    async with httpx.AsyncClient(timeout=60) as client:
        request = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json={**BODY, "stream": True}))
        await until(looking.is_set)  # the server has it, looking it up
        await leave(request)
        left.set()
        await until(lambda: len(streamed_records(activity)) == 1)
        last = await client.post(f"{url}/v1/chat/completions", json=BODY)
        return streamed_records(activity), last.status_code


def test_a_stream_whose_client_left_before_it_began_is_recorded_as_cancelled(
    upstream: FakeUpstream, make_settings: Callable[..., Settings], presets_dir: Path, tmp_path: Path
) -> None:
    """A slow cache lookup: the client leaves before the stream begins, so its body never runs. Recorded as
    cancelled with no status code (not a 200 `ok`), its run given back."""
    script_degraded_run(upstream, synth_delay_s=0.0)
    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")
    activity = tmp_path / "activity.sqlite3"
    settings = make_settings(activity={"path": activity, "flush_interval_s": 0.05}, cache={"wait_s": WAIT_S})
    app = create_app(settings, environ={"FAKE_KEY": "sk-fake"})
    looking, left = threading.Event(), threading.Event()
    with serve_in_thread(app) as url:
        store = app.state.openfusion.cache.store
        look = store.get

        async def slow_get(key: str) -> bytes | None:
            if not looking.is_set():  # the first lookup ends only once its client has left, seen gone by the server
                looking.set()
                assert await asyncio.to_thread(left.wait, 60)
                for _ in range(5):  # passes of the server's loop: the closed connection (already in) is read
                    await asyncio.sleep(0.02)
            return await look(key)

        store.get = slow_get
        started = time.monotonic()
        records, status = asyncio.run(leave_during_a_slow_lookup(url, activity, looking, left))
        took = time.monotonic() - started
    assert records[0] == ("cancelled", None, "cancelled")
    assert status == 200 and took < WAIT_S  # the run it took was given back: the next one did not wait for it
    assert len(upstream.calls_for("synth")) == 1  # the one of the last request


async def refresh_and_leave_then_ask(url: str, taking: threading.Event, done: threading.Event) -> float:
    """A plain request that refreshes the cache, whose client leaves while the run's Redis lock is being taken
    (`taking` it, `done` once that call ended), then an identical one: how long that one took."""
    async with httpx.AsyncClient(timeout=60) as client:
        request = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=BODY, headers={CACHE: "refresh"}))
        await until(taking.is_set)  # the server has it, taking the lock
        await leave(request)  # the client really leaves, before the answer
        await until(done.is_set)  # the server is done with the lock's call: cancelled as its client left
        started = time.monotonic()
        last = await client.post(f"{url}/v1/chat/completions", json=BODY)
        assert last.status_code == 200, last.text
        return time.monotonic() - started


@pytest.mark.parametrize("taken", [False, True], ids=["before-redis-took-it", "after-redis-took-it"])
def test_a_refresh_whose_client_left_while_its_lock_was_taken_gives_the_run_back(
    taken: bool, upstream: FakeUpstream, make_settings: Callable[..., Settings], presets_dir: Path, redis_prefix: str
) -> None:
    """Cancelled while taking its run's Redis lock, a refreshing request never gave back the run it had begun to
    take in its process, nor the lock Redis may have given it already: every later identical request waited
    `wait_s` for a run nobody made (there for good, on every replica until the lock expired)."""
    script_degraded_run(upstream, synth_delay_s=0.0)
    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")
    settings = make_settings(redis_url="redis://127.0.0.1:6379/0", limits={"redis_prefix": redis_prefix},
                             cache={"wait_s": WAIT_S})  # fmt: skip
    app = create_app(settings, environ={"FAKE_KEY": "sk-fake"})
    taking, done, cancelled = threading.Event(), threading.Event(), threading.Event()
    with serve_in_thread(app) as url:
        store = app.state.openfusion.cache.store
        take = store.lock

        async def slow_lock(key: str, token: str, *, ttl_s: float) -> str:
            if taking.is_set():
                return await take(key, token, ttl_s=ttl_s)
            taking.set()  # the first: slower than its client's patience, until the server sees the client gone
            try:
                holder = await take(key, token, ttl_s=ttl_s) if taken else None
                await asyncio.sleep(WAIT_S)  # cancelled when the client leaves
                return holder if holder is not None else await take(key, token, ttl_s=ttl_s)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            finally:
                done.set()

        store.lock = slow_lock
        took = asyncio.run(refresh_and_leave_then_ask(url, taking, done))
    assert cancelled.is_set()  # the fault happened: the request was cancelled while taking the lock
    assert took < WAIT_S / 2, f"the last request waited {took:.1f} s for a run nobody made"


async def first_then_two_on_each(first_url: str, other_url: str, upstream: FakeUpstream) -> list[httpx.Response]:
    """One request on the first replica, then two identical ones on each replica while it runs."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(f"{first_url}/v1/chat/completions", json=BODY))
        await until(lambda: bool(upstream.calls_for("b")))  # the first request has the run
        waiters = [client.post(f"{url}/v1/chat/completions", json=BODY) for url in (first_url, other_url) * 2]
        return await asyncio.gather(first, *waiters)


def test_requests_on_other_replicas_that_waited_for_a_run_not_kept_run_together(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """Two `openfusion serve` sharing Redis: a run cut off at its token limit is not kept, and the requests that
    waited for it on the other replica learn so at once, as those on its own do. Not one run after another there
    (the lock taken by one of them, the others waiting for that run too)."""
    for model in ("a", "b", "c"):
        upstream.script(model, Script(content=f"{model} says blue."))
    upstream.script("synth", Script(content="Rayleigh scat", finish_reason="length", delay_s=1.5))
    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")
    _, upstream_url = fake_upstream
    config = provider_config(
        upstream_url,
        top='redis_url = "redis://127.0.0.1:6379/0"',
        # A Redis call slower than timeout_s runs without the lock (by design): patient on a loaded machine.
        extra=f'[limits]\nredis_prefix = "{redis_prefix}"\n[cache]\nwait_s = 30.0\ntimeout_s = 30.0\n',
    )
    with serve(config, presets_dir, tmp_path / "one") as one, serve(config, presets_dir, tmp_path / "two") as two:
        answers = asyncio.run(first_then_two_on_each(one.url, two.url, upstream))
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert [a.headers["x-openfusion-cache"] for a in answers] == ["miss"] * 5
    assert all(a.json()["choices"][0]["finish_reason"] == "length" for a in answers)  # truncated: none was kept
    first, *waiters = sorted(upstream.calls_for("synth"), key=lambda call: call.started)
    assert len(waiters) == 4 and first.finished is not None
    assert all(call.started >= first.finished for call in waiters)  # they did wait for the first run
    ends = [call.finished for call in waiters if call.finished is not None]
    assert max(call.started for call in waiters) < min(ends)  # then all ran at the same time, on both replicas


def test_a_request_waiting_for_a_run_on_another_replica_ends_with_the_grace_period(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """A plain request waiting for an identical run on another replica (up to `wait_s`) when its replica is stopped:
    the grace period's end did not stop that wait, so it ran until uvicorn's backstop cancelled it, and its client
    got a text/plain 500. It ends with the grace period, with a 503 `server_shutting_down`, and is recorded so."""
    for model in ("a", "b", "c"):
        upstream.script(model, Script(content=f"{model} says blue."))
    upstream.script("synth", Script(content="Rayleigh scattering.", delay_s=30))
    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")
    _, upstream_url = fake_upstream

    def config(name: str) -> str:
        extra = (f'[limits]\nredis_prefix = "{redis_prefix}"\n[cache]\nwait_s = 60.0\ntimeout_s = 30.0\n'
                 f'[activity]\npath = "{tmp_path / name / "activity.sqlite3"}"\n')  # fmt: skip
        return provider_config(upstream_url, grace_s=1, top='redis_url = "redis://127.0.0.1:6379/0"', extra=extra)

    answers: dict[str, Any] = {}

    def post(name: str, url: str) -> None:
        try:
            answers[name] = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
        except httpx.HTTPError as exc:
            answers[name] = exc

    with (
        serve(config("one"), presets_dir, tmp_path / "one") as one,
        serve(config("two"), presets_dir, tmp_path / "two") as two,
    ):
        first = threading.Thread(target=post, args=("first", one.url))
        first.start()
        wait_until(lambda: bool(upstream.calls_for("synth")), timeout=20)  # the run is under way on the first replica
        second = threading.Thread(target=post, args=("second", two.url))
        second.start()
        wait_until(lambda: in_flight(two.url) == 1, timeout=60)  # the second request waits for that run
        assert "second" not in answers and not upstream.calls_for("synth")[0].finished
        two.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        second.join(30)
        took = time.monotonic() - stopped
        assert two.process.wait(timeout=30) == 0, two.log_text()[-3000:]
    first.join(30)
    answer = answers["second"]
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 503, (answer.status_code, answer.text, took)
    # Ended by the grace period (1 s), not by uvicorn's backstop 2 s later (a text/plain 500): told by the answer
    # rather than by the time it took, which a loaded machine stretches.
    assert answer.json()["error"]["code"] == "server_shutting_down"
    with sqlite3.connect(tmp_path / "two" / "activity.sqlite3") as db:
        rows = db.execute("SELECT status, failure_reason FROM generations").fetchall()
    assert rows == [("error", "server_shutting_down")]
