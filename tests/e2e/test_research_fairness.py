"""One client key's research cannot hold a worker's fetch client, through the real server with two client keys.

The pages trickle a byte at a time until the test lets them go, as a hostile or slow site would: each fetch holds
one of the fetch client's 64 connections meanwhile. The page server counts the pages being sent at each moment.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, web_fetch_call
from openfusion.app import create_app
from openfusion.settings import Settings
from openfusion.upstream.web.fetch_slots import SharedConnections

from .conftest import server_environ

pytestmark = pytest.mark.usefixtures("loopback_only")

ALICE, BOB, CAROL = "sk-alice-fetches-0123456789", "sk-bob-fetches-0123456789", "sk-carol-fetches-0123456789"
KEYS = [{"name": name, "key_env": f"{name.upper()}_KEY"} for name in ("alice", "bob", "carol")]
# Every fetch's time-out: a slow page is held until the test lets it go, which a loaded machine may take long to get to.
FETCH_S = 300
READER = """
analysis_models = ["fake/reader"]
model = "fake/judge"
synthesis_model = "fake/synth"
max_tool_calls = 16
"""


class TricklingSite:
    """Pages that send a byte every 50 ms until `release` (or, one page at a time, `let_one_go`); `held` counts
    those being sent right now, `started` every page asked for, in order."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.held = 0
        self.peak = 0  # the most pages held at once
        self.fast: list[tuple[int, bool]] = []  # per /fast request: pages held then, and whether still held
        self.started: list[str] = []  # the path of every page asked for, in order
        self.let_go = 0  # slow pages allowed to end before `release`
        self.app = Starlette(routes=[Route("/slow/{n}", self._slow), Route("/fast", self._fast)])

    def reset(self) -> None:
        self.released.clear()
        self.held = self.peak = self.let_go = 0
        self.fast.clear()
        self.started.clear()

    def let_one_go(self) -> None:
        """Let one slow page (whichever sees it first) end."""
        with self.lock:
            self.let_go += 1

    def _may_end(self) -> bool:
        with self.lock:
            if self.let_go > 0:
                self.let_go -= 1
                return True
        return self.released.is_set()

    async def _slow(self, request: Request) -> Response:
        with self.lock:
            self.started.append(request.url.path)
        return StreamingResponse(self._trickle(), media_type="text/plain")

    async def _trickle(self) -> AsyncIterator[bytes]:
        with self.lock:
            self.held += 1
            self.peak = max(self.peak, self.held)
        try:
            while not self._may_end():
                yield b"."
                await asyncio.sleep(0.05)
            yield b" Slow facts."
        finally:  # also when the fetcher gives up and the connection goes
            with self.lock:
                self.held -= 1

    def _fast(self, request: Request) -> Response:
        with self.lock:
            self.started.append(request.url.path)
            self.fast.append((self.held, not self.released.is_set()))
        return PlainTextResponse("Fast facts.")


_SITE = TricklingSite()


@pytest.fixture(scope="module")
def _served() -> Iterator[str]:
    with serve_in_thread(_SITE.app) as url:
        yield url


@pytest.fixture
def site(_served: str) -> Iterator[tuple[TricklingSite, str]]:
    _SITE.reset()
    yield _SITE, _served
    _SITE.released.set()  # nothing left trickling for the next test


Start = Callable[..., AbstractContextManager[tuple[str, SharedConnections]]]


@pytest.fixture
def start(make_settings: Callable[..., Settings], presets_dir: Path) -> Start:
    """openfusion with the keys alice, bob and carol, fetching from loopback with these `[research.fetch]` values;
    yields its URL and its fetch connections (to see whose fetches wait for one)."""
    (presets_dir / "reader.toml").write_text(READER)

    @contextmanager
    def run(**fetch: Any) -> Iterator[tuple[str, SharedConnections]]:
        research = {"fetch": {"allow_private": ["127.0.0.0/8"], **fetch}}
        settings = make_settings(keys=KEYS, research=research)
        app = create_app(settings, environ=server_environ(ALICE_KEY=ALICE, BOB_KEY=BOB, CAROL_KEY=CAROL))
        with serve_in_thread(app) as url:
            connections = app.state.openfusion.research.connections
            assert connections is not None
            yield url, connections

    return run


def ask(url: str, key: str, preset: str) -> httpx.Response:
    body = {"model": f"fusion/{preset}", "messages": [{"role": "user", "content": "Read them."}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=600)


def tool_results(upstream: FakeUpstream, model: str) -> list[str]:
    """What the model was told by its tool calls, over every request's second call to it."""
    return [m["content"] for call in upstream.calls_for(model) for m in call.body["messages"] if m["role"] == "tool"]


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` came true within `timeout` (only so that a broken server fails instead of hanging)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_one_keys_requests_fetching_trickling_pages_leave_another_keys_fetch_a_connection(
    upstream: FakeUpstream, start: Start, site: tuple[TricklingSite, str]
) -> None:
    pages, base = site
    # Alice: four requests of 16 fetches each, 64 in all: every connection of the worker's fetch client.
    reads = [Script(tool_calls=[web_fetch_call(f"{base}/slow/{r}-{p}") for p in range(16)]) for r in range(4)]
    upstream.script("reader", *reads, *(Script(content="Slowly read.") for _ in range(4)))
    upstream.script("a", Script(tool_calls=[web_fetch_call(f"{base}/fast")]), Script(content="Quickly read."))

    with start(timeout_s=FETCH_S) as (url, _), ThreadPoolExecutor(5) as pool:
        alices = [pool.submit(ask, url, ALICE, "reader") for _ in range(4)]
        try:
            # Alice's fetches fill her share (32, half the connections); the rest of hers wait for a turn.
            wait_for(lambda: pages.held >= 32 or any(a.done() for a in alices), timeout=60)
            bobs = pool.submit(ask, url, BOB, "trio")
            wait_for(lambda: bool(pages.fast) or bobs.done(), timeout=60)
        finally:
            pages.released.set()
        answers = [a.result() for a in [*alices, bobs]]

    assert [answer.status_code for answer in answers] == [200] * 5, [a.text for a in answers]
    # Bob's page was read while Alice's 32 were still held, never waiting for one of hers to end.
    assert pages.fast == [(32, True)]
    assert pages.peak == 32  # at most her share at once, though her requests asked for 64
    (read,) = tool_results(upstream, "a")
    assert "Fast facts." in read
    slow = tool_results(upstream, "reader")
    assert len(slow) == 64 and all("Slow facts." in result for result in slow)  # those that waited read too


def test_a_fetch_that_waited_for_its_keys_turn_until_it_timed_out_says_so(
    upstream: FakeUpstream, start: Start, site: tuple[TricklingSite, str]
) -> None:
    pages, base = site
    slow = [web_fetch_call(f"{base}/slow/{n}") for n in range(2)]
    upstream.script("a", Script(tool_calls=slow), Script(content="Nothing read."))

    # Time-outs of 3 s: the first fetch reaches its page well within it, however loaded the machine.
    with start(timeout_s=3, max_fetches_per_key=1) as (url, _):
        answer = ask(url, ALICE, "trio")

    assert answer.status_code == 200, answer.text
    assert pages.peak == 1  # the second waited for the key's one turn, instead of taking a second connection
    first, second = tool_results(upstream, "a")
    assert first == "web_fetch error: the fetch timed out after 3 s."
    # It waited, within its own time-out, for the first to give the turn back (at the first's time-out): it may
    # have had a moment of its own left (how long, the two fetches' start a moment apart tell), or none.
    waited = r"(, (\d\.\d) s of it waiting for a turn \((.*)\)| waiting for a turn: (.*))\.$"
    said = re.fullmatch(r"web_fetch error: the fetch timed out after 3 s" + waited, second)
    assert said is not None, second
    assert "requests made with this client key had 1 fetch under way" in said.group(1), second
    assert said.group(2) is None or 0 < float(said.group(2)) <= 3, second


def slow_reads(base: str, *, requests: range) -> list[Script]:
    """One first turn per request of the `reader` preset: 16 fetches of trickling pages each."""
    return [Script(tool_calls=[web_fetch_call(f"{base}/slow/{r}-{p}") for p in range(16)]) for r in requests]


def test_a_freed_connection_goes_to_the_key_with_the_fewest_fetches_not_to_the_first_in_line(
    upstream: FakeUpstream, start: Start, site: tuple[TricklingSite, str]
) -> None:
    """Two keys hold all 64 connections and have more fetches waiting; a third key's fetch gets the next one freed.

    Each key may have 48 under way: Alice takes 48 connections, Bob the other 16 and waits for 32 more. Carol
    comes after both, yet with no fetch under way she is served before Bob (16) and Alice (48) get another.
    """
    pages, base = site
    upstream.script("reader", *slow_reads(base, requests=range(8)), Script(content="Slowly read."))
    upstream.script("a", Script(tool_calls=[web_fetch_call(f"{base}/fast")]), Script(content="Quickly read."))

    with start(timeout_s=FETCH_S, max_fetches_per_key=48) as (url, connections), ThreadPoolExecutor(9) as pool:
        floods = [pool.submit(ask, url, ALICE, "reader") for _ in range(4)]
        try:
            assert wait_for(lambda: pages.held >= 48, timeout=60), pages.held
            floods += [pool.submit(ask, url, BOB, "reader") for _ in range(4)]
            # Bob's other 32 fetches line up for a connection
            assert wait_for(lambda: pages.held >= 64 and connections.waiting("bob") == 32, timeout=60)
            carols = pool.submit(ask, url, CAROL, "trio")
            assert wait_for(lambda: connections.waiting("carol") == 1, timeout=60)  # and Carol's behind them
            assert pages.started.count("/fast") == 0 and pages.held == 64
            # Connections come free one at a time, as slow pages end: each goes to a fetch before the next is freed.
            for _ in range(40):
                if pages.fast:
                    break
                asked = len(pages.started)
                pages.let_one_go()
                assert wait_for(lambda asked=asked: len(pages.started) > asked, timeout=60)
            before_carols = pages.started.index("/fast") if pages.fast else len(pages.started)
        finally:
            pages.released.set()
        answers = [answer.result() for answer in [*floods, carols]]

    assert [answer.status_code for answer in answers] == [200] * 9, [a.text for a in answers]
    # Carol's page was asked for with the first connection freed: before the fix, Bob's 32 waiting fetches, there
    # first, took the next 32.
    assert before_carols == 64, f"{before_carols - 64} fetches of Alice's and Bob's went first"
    assert pages.peak == 64  # never more than the fetch client's connections
    (read,) = tool_results(upstream, "a")
    assert "Fast facts." in read
    slow = tool_results(upstream, "reader")
    assert len(slow) == 128 and all("Slow facts." in result for result in slow)


def hang_up_after_asking(url: str, key: str, preset: str) -> socket.socket:
    """A client that sends its request and then leaves (the caller closes the socket) before any answer."""
    body = orjson.dumps({"model": f"fusion/{preset}", "messages": [{"role": "user", "content": "Read them."}]})
    client = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    client.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (key.encode(), len(body)) + body
    )
    return client


def test_fetches_waiting_for_a_connection_when_their_client_leaves_give_up_their_place(
    upstream: FakeUpstream, start: Start, site: tuple[TricklingSite, str]
) -> None:
    """Bob's fetches wait for a connection (Alice holds all 64) when he hangs up: they never start, and once
    Alice's pages end, all 64 connections are there to be used again: no waiting fetch kept one."""
    pages, base = site
    reads = slow_reads(base, requests=range(4))
    bobs_reads = Script(tool_calls=[web_fetch_call(f"{base}/slow/bob-{p}") for p in range(16)])
    upstream.script("reader", *reads, bobs_reads, Script(content="Slowly read."))

    with start(timeout_s=FETCH_S, max_fetches_per_key=64) as (url, connections), ThreadPoolExecutor(4) as pool:
        alices = [pool.submit(ask, url, ALICE, "reader") for _ in range(4)]
        try:
            assert wait_for(lambda: pages.held >= 64, timeout=60), pages.held
            with hang_up_after_asking(url, BOB, "reader"):
                # his 16 fetches line up for a connection
                assert wait_for(lambda: connections.waiting("bob") == 16, timeout=60)
            # He has gone: the server cancels his run, and with it the fetches waiting
            assert wait_for(lambda: connections.waiting("bob") == 0, timeout=60)
        finally:
            pages.released.set()
        assert [alice.result().status_code for alice in alices] == [200] * 4
        bobs_pages = [path for path in pages.started if "/bob-" in path]

        pages.reset()  # Alice again: 64 fetches at once, every connection (none lost to Bob's)
        upstream.script("reader", *slow_reads(base, requests=range(4)), Script(content="Slowly read."))
        again = [pool.submit(ask, url, ALICE, "reader") for _ in range(4)]
        try:
            all_at_once = wait_for(lambda: pages.held >= 64, timeout=60)
            peak = pages.peak
        finally:
            pages.released.set()
        assert [answer.result().status_code for answer in again] == [200] * 4

    assert all_at_once and peak == 64, peak
    assert bobs_pages == [], "a fetch of Bob's started after he left"
