"""Redis failing under a running server: restarted empty, stopped or cut off while requests hold its counters, or
paused while a cached fusion looks its answer up.

Each test runs its own Redis (`private_redis`), makes the fault for real, and checks it happened (the counters gone, or
left behind) before the server mended them. Leases are short where a renewal must come within the test.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

import openfusion.app
from e2e.gateway import Link
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.access.control import build_access
from openfusion.access.redis_spend import CLOCK_MARGIN_S

from .conftest import bearer, chat_body
from .private_redis import PrivateRedis
from .test_limits import assert_429, open_passthrough_stream
from .test_spend_caps import CENT, FULL, pricing

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-team-a-4f9a2c7e1d"
A = bearer(KEY)
ENVIRON = {"TEAM_A_KEY": KEY}
PREFIX = "openfusion-faults"
LEASE_S = 1.5


@pytest.fixture
def short_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases of LEASE_S (renewed every third of it) instead of a minute, for renewals within a test."""
    monkeypatch.setattr(openfusion.app, "build_access", functools.partial(build_access, lease_ttl_s=LEASE_S))


def team_a(redis: PrivateRedis, **limits: float) -> dict[str, object]:
    keys = [{"name": "team-a", "key_env": "TEAM_A_KEY", **limits}]
    return {"keys": keys, "redis_url": redis.url, "limits": {"redis_prefix": PREFIX}}


def test_a_request_in_flight_keeps_its_concurrency_slot_when_redis_restarts_empty(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, short_leases: None
) -> None:
    """A restart emptied the leases: the stream still running went uncounted, and a second request got in."""
    upstream.script("slow", Script(chunks=["Hello", " there", "!"], chunk_interval_s=3))
    leases = f"{{{PREFIX}}}:requests:key:team-a"
    with serve(team_a(private_redis, max_concurrent_requests=1), environ=ENVIRON) as (url, _):
        with open_passthrough_stream(url, A), private_redis.client() as redis:
            assert redis.zcard(leases) == 1
            assert_429(
                httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A),
                "concurrency_limited",
                max_retry_after=1,
            )
            private_redis.restart_empty()
            assert redis.zcard(leases) == 0  # the fault: Redis forgot the slot
            wait_until(lambda: redis.zcard(leases) == 1, timeout=LEASE_S)  # taken again at its next renewal
            refused = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A)
            assert_429(refused, "concurrency_limited", max_retry_after=1)
        with private_redis.client() as redis:
            wait_until(lambda: redis.zcard(leases) == 0)  # given back when the stream ended
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A).status_code == 200


def test_a_request_in_flight_keeps_its_spend_reservation_when_redis_restarts_empty(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, tmp_path: Path, short_leases: None
) -> None:
    """A restart emptied the reservations: a second $0.10 request got in under a $0.15 cap, and $0.20 was spent."""
    upstream.script("a", Script(delay_s=4.0, usage=FULL))  # costs its estimate: $0.10
    upstream.script("b", Script(usage={"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10)
    access = team_a(private_redis, daily_spend_usd=0.15)
    with serve(access, environ=ENVIRON, activity=activity, pricing=pricing(a=CENT, b=CENT)) as (url, _):
        first: list[httpx.Response] = []
        running = threading.Thread(target=lambda: first.append(post(url, body)))
        running.start()
        with private_redis.client() as redis:
            wait_until(lambda: held(redis) == 1)
            assert_429(post(url, body), "spend_limited", max_retry_after=2)
            private_redis.restart_empty()
            assert held(redis) == 0  # the fault: Redis forgot the reservation
            wait_until(lambda: held(redis) == 1, timeout=LEASE_S)  # made again at its next renewal
            assert_429(post(url, body), "spend_limited", max_retry_after=2)
            running.join()
            assert first[0].status_code == 200
            wait_until(lambda: held(redis) == 0)
            # A reading dated before the cost's write counts it twice (early readings count more, never less).
            time.sleep(CLOCK_MARGIN_S + 0.1)
        # Counted once: $0.10 spent, and a $0.05 request still fits the cap.
        fits = post(url, chat_body("fake/b", max_tokens=5))
        assert fits.status_code == 200, fits.text
        assert_429(post(url, chat_body("fake/b", max_tokens=5)), "spend_limited", max_retry_after=86_400)
    assert len(upstream.calls_for("a")) == 1


def empty(private_redis: PrivateRedis, how: str) -> None:
    """Make Redis lose every counter: restarted without persistence, or flushed."""
    if how == "restarted":
        private_redis.restart_empty()
    else:
        with private_redis.client() as client:
            client.flushall()


@pytest.mark.parametrize("how", ["restarted", "flushed"])
def test_the_next_request_after_redis_lost_its_counters_finds_the_slot_of_one_in_flight_taken_again(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, how: str
) -> None:
    """With the default lease (a minute, renewed every 20 s), a request that came after Redis lost the leases got in
    beside the stream still running: that stream went uncounted until its next renewal."""
    upstream.script("slow", Script(chunks=["Hello", " there", "!"], chunk_interval_s=3))
    leases = f"{{{PREFIX}}}:requests:key:team-a"
    with serve(team_a(private_redis, max_concurrent_requests=1), environ=ENVIRON) as (url, _):
        with open_passthrough_stream(url, A), private_redis.client() as redis:
            assert redis.zcard(leases) == 1
            empty(private_redis, how)
            assert redis.zcard(leases) == 0  # the fault: Redis forgot the slot
            refused = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A)
            assert_429(refused, "concurrency_limited", max_retry_after=1)
            assert redis.zcard(leases) == 1  # taken again by that admission, not 20 s later
        with private_redis.client() as redis:
            wait_until(lambda: redis.zcard(leases) == 0)  # given back when the stream ended
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A).status_code == 200


@pytest.mark.parametrize("how", ["restarted", "flushed"])
def test_the_next_request_after_redis_lost_its_counters_finds_the_reservation_of_one_in_flight_made_again(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, tmp_path: Path, how: str
) -> None:
    """With the default lease, a second $0.10 request got in under a $0.15 cap right after Redis lost the
    reservations: $0.20 spent."""
    upstream.script("a", Script(delay_s=3.0, usage=FULL))  # costs its estimate: $0.10
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10)
    access = team_a(private_redis, daily_spend_usd=0.15)
    with serve(access, environ=ENVIRON, activity=activity, pricing=pricing(a=CENT)) as (url, _):
        first: list[httpx.Response] = []
        running = threading.Thread(target=lambda: first.append(post(url, body)))
        running.start()
        with private_redis.client() as redis:
            wait_until(lambda: held(redis) == 1)
            empty(private_redis, how)
            assert held(redis) == 0  # the fault: Redis forgot the reservation
            assert_429(post(url, body), "spend_limited", max_retry_after=2)
            assert held(redis) == 1  # made again by that admission, not 20 s later
            running.join()
    assert first[0].status_code == 200
    assert len(upstream.calls_for("a")) == 1


def test_a_cost_settled_while_redis_is_down_is_counted_once_it_is_back(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """A relayed stream's cost is unknown, so its estimate stays counted all day: it was dropped when Redis could not
    take it at the stream's end, and the next request got past the cap."""
    upstream.script("slow", Script(chunks=["Hello", " there"], chunk_interval_s=1))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    access = team_a(private_redis, daily_spend_usd=0.15)
    streamed = chat_body("fake/slow", stream=True, max_tokens=10)  # $0.10 at most
    with serve(access, environ=ENVIRON, activity=activity, pricing=pricing(a=CENT, slow=CENT)) as (url, _):
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=streamed, headers=A, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # admitted: its reservation is in Redis
            private_redis.stop()
            assert list(lines)[-2:] == ["data: [DONE]", ""]  # the stream ends while Redis is down
        with pytest.raises(redis.exceptions.ConnectionError), private_redis.client() as client:
            client.ping()  # the fault: nothing could be settled
        private_redis.start()  # empty
        with private_redis.client() as client:
            wait_until(lambda: kept(client) == pytest.approx(0.10), timeout=5)
            assert_429(post(url, chat_body("fake/a", max_tokens=10)), "spend_limited", max_retry_after=86_400)
            assert kept(client) == pytest.approx(0.10)  # once
    assert not upstream.calls_for("a")


def kept(client: redis.Redis) -> float:
    """USD kept all day against team-a's cap in Redis (costs that stay unknown)."""
    keys = client.keys(f"{{{PREFIX}}}:spend:key:team-a:*:totals")
    return sum(float(client.hget(key, "kept") or 0) for key in keys)


def test_a_slot_given_back_while_redis_is_cut_off_is_freed_once_redis_answers(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis
) -> None:
    """A stream that ended while Redis was cut off left its slot held for the whole lease (a minute): the key's only
    slot, so every request of the key got 429 for that long after Redis was back."""
    upstream.script("slow", Script(chunks=["Hello", " there"], chunk_interval_s=1))
    link = Link(("127.0.0.1", private_redis.port))
    leases = f"{{{PREFIX}}}:requests:key:team-a"
    access = {**team_a(private_redis, max_concurrent_requests=1), "redis_url": f"redis://127.0.0.1:{link.port}/0"}
    try:
        with serve(access, environ=ENVIRON) as (url, _), private_redis.client() as redis_server:
            streamed = chat_body("fake/slow", stream=True)
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=streamed, headers=A, timeout=30) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")  # admitted: its slot is in Redis
                link.cut()
                assert list(lines)[-2:] == ["data: [DONE]", ""]  # the stream ends while Redis is cut off
            assert redis_server.zcard(leases) == 1  # the fault: the slot could not be given back
            link.mend()
            wait_until(lambda: redis_server.zcard(leases) == 0, timeout=5)  # well within the lease's minute
            assert post(url, chat_body("fake/a")).status_code == 200
    finally:
        link.cut()


def test_a_cached_fusion_waits_for_one_lookup_and_one_write_while_redis_does_not_answer(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """After a lookup Redis did not answer, the request also waited for the lock and a second lookup, each as long."""
    timeout_s = 0.5
    body = {**chat_body("fusion/trio"), "plugins": [{"id": "fusion", "cache": {"ttl_s": 600}}]}
    access = {"redis_url": private_redis.url, "limits": {"redis_prefix": PREFIX}}
    with serve(access, cache={"timeout_s": timeout_s}) as (url, _), private_redis.client() as redis_server:
        assert httpx.post(f"{url}/v1/chat/completions", json=body).headers["x-openfusion-cache"] == "miss"
        assert httpx.post(f"{url}/v1/chat/completions", json=body).headers["x-openfusion-cache"] == "hit"
        redis_server.client_pause(10_000, all=False)  # writes, and scripts: every call of the cache
        try:
            started = time.monotonic()
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            took = time.monotonic() - started
        finally:
            redis_server.client_unpause()
    assert response.status_code == 200 and response.headers["x-openfusion-cache"] == "miss"  # the hit went unread
    assert "result cache lock failed" not in caplog.text
    assert took < 3 * timeout_s, f"{took:.2f} s"  # the lookup's limit and the write's, not four of them


def post(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=A, timeout=30)


def held(redis: object) -> int:
    """How many spend reservations of team-a are running in Redis today."""
    keys = redis.keys(f"{{{PREFIX}}}:spend:key:team-a:*:running")  # type: ignore[attr-defined]
    return sum(redis.hlen(key) for key in keys)  # type: ignore[attr-defined]
