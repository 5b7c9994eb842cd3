"""Limits end to end: requests per minute, concurrent fusion runs and requests, and the daily spend cap, in-process and
via Redis."""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script, wait_until

from .conftest import REDIS_URL, bearer, chat_body, fake_prices

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
TEAM_A = {"name": "team-a", "key_env": "TEAM_A_KEY"}
TEAM_B = {"name": "team-b", "key_env": "TEAM_B_KEY"}
ENVIRON = {"TEAM_A_KEY": "sk-team-a-4f9a2c7e1d", "TEAM_B_KEY": "sk-team-b-4f9a2c7e1d"}
A, B = bearer("sk-team-a-4f9a2c7e1d"), bearer("sk-team-b-4f9a2c7e1d")


def assert_429(response: httpx.Response, code: str, *, max_retry_after: int) -> int:
    """The response is an OpenAI-format 429 with `code` and a sane Retry-After; returns that."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", code, None)
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= max_retry_after
    return retry_after


def test_requests_per_minute_per_key(upstream: FakeUpstream, serve: Serve) -> None:
    keys = [{**TEAM_A, "requests_per_minute": 3}, TEAM_B]
    with serve({"keys": keys}, environ=ENVIRON) as (url, _):
        assert httpx.get(f"{url}/v1/models", headers=A).status_code == 200
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A).status_code == 200
        assert httpx.get(f"{url}/api/v1/models", headers=A).status_code == 200
        refused = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A)
        assert_429(refused, "rate_limited", max_retry_after=60)
        assert "team-a" in refused.json()["error"]["message"]
        # Other keys and the health probes are not touched.
        assert all(httpx.get(f"{url}/v1/models", headers=B).status_code == 200 for _ in range(5))
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert len(upstream.calls_for("a")) == 1


def test_limits_apply_globally_without_keys(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"limits": {"requests_per_minute": 2}}) as (url, _):
        assert [httpx.get(f"{url}/v1/models").status_code for _ in range(2)] == [200, 200]
        assert_429(httpx.get(f"{url}/v1/models", headers=A), "rate_limited", max_retry_after=60)
        assert httpx.get(f"{url}/readyz").status_code == 200


def test_limits_defaults_apply_to_each_key_separately(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"keys": [TEAM_A, TEAM_B], "limits": {"requests_per_minute": 1}}, environ=ENVIRON) as (url, _):
        assert httpx.get(f"{url}/v1/models", headers=A).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers=B).status_code == 200
        assert_429(httpx.get(f"{url}/v1/models", headers=A), "rate_limited", max_retry_after=60)


def test_requests_per_minute_across_two_replicas_sharing_redis(
    upstream: FakeUpstream, serve: Serve, redis_prefix: str
) -> None:
    access = {
        "keys": [{**TEAM_A, "requests_per_minute": 3}],
        "redis_url": REDIS_URL,
        "limits": {"redis_prefix": redis_prefix},
    }
    with serve(access, environ=ENVIRON) as (url_a, _), serve(access, environ=ENVIRON) as (url_b, _):
        assert httpx.get(f"{url_a}/v1/models", headers=A).status_code == 200
        assert httpx.post(f"{url_a}/v1/chat/completions", json=chat_body("fake/a"), headers=A).status_code == 200
        assert httpx.get(f"{url_b}/v1/models", headers=A).status_code == 200
        assert_429(httpx.get(f"{url_b}/v1/models", headers=A), "rate_limited", max_retry_after=60)
        assert_429(httpx.get(f"{url_a}/v1/models", headers=A), "rate_limited", max_retry_after=60)


@contextlib.contextmanager
def open_fusion_stream(url: str, headers: dict[str, str]) -> httpx.Response:  # type: ignore[misc]
    """A fusion stream held open (its panel is slow) after its first line, i.e. once it was admitted."""
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=chat_body("fusion/trio", stream=True), headers=headers, timeout=10
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: dropping a half-read iterator closes the connection
        assert next(lines) == ": OPENFUSION PROCESSING"
        yield response


def slow_panel(upstream: FakeUpstream) -> None:
    for model in "abc":
        upstream.script(model, Script(delay_s=5))


def test_concurrent_fusion_runs_per_key(upstream: FakeUpstream, serve: Serve) -> None:
    slow_panel(upstream)
    keys = [{**TEAM_A, "max_concurrent_fusion": 2}, TEAM_B]
    with serve({"keys": keys}, environ=ENVIRON) as (url, app), ExitStack() as streams:
        limiter = app.state.access.limiter
        first = streams.enter_context(open_fusion_stream(url, A))
        streams.enter_context(open_fusion_stream(url, A))
        for stream in (False, True):
            body = chat_body("fusion", stream=stream)
            refused = httpx.post(f"{url}/v1/chat/completions", json=body, headers=A)
            assert_429(refused, "concurrency_limited", max_retry_after=1)
        # Pass-through is not a fusion run, and other keys have their own slots.
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/judge"), headers=A).status_code == 200
        streams.enter_context(open_fusion_stream(url, B))
        # A client that leaves gives its slot back.
        first.close()
        wait_until(lambda: limiter.held("key:team-a") == 1)
        streams.enter_context(open_fusion_stream(url, A))
        assert limiter.held("key:team-a") == 2
    assert limiter.held("key:team-a") == 0


def test_finished_and_failed_fusion_runs_give_their_slot_back(upstream: FakeUpstream, serve: Serve) -> None:
    keys = [{**TEAM_A, "max_concurrent_fusion": 1}]
    with serve({"keys": keys}, environ=ENVIRON) as (url, app):
        for stream in (False, True, False):
            response = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion", stream=stream), headers=A)
            assert response.status_code == 200
            response.read()
        for model in "abc":
            upstream.script(model, Script(status=500))
        failed = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion"), headers=A)
        assert failed.status_code == 502
        for model in "abc":
            upstream.script(model, Script())
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion"), headers=A).status_code == 200
        assert app.state.access.limiter.held("key:team-a") == 0


@contextlib.contextmanager
def open_passthrough_stream(url: str, headers: dict[str, str]) -> httpx.Response:  # type: ignore[misc]
    """A pass-through stream held open after its first chunk (the fake's `slow` model waits between chunks)."""
    body = chat_body("fake/slow", stream=True)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: dropping a half-read iterator closes the connection
        assert next(lines).startswith("data: ")
        yield response


def test_concurrent_requests_per_key_count_pass_through_and_fusion_on_every_surface(
    upstream: FakeUpstream, serve: Serve
) -> None:
    """Pass-through is not a fusion run, so `max_concurrent_fusion` never counted it: one key could hold every
    upstream connection the server shares (its pool) with slow streams. `max_concurrent_requests` counts both."""
    upstream.script("slow", Script(chunks=["Hello", " there"], chunk_interval_s=5))
    keys = [{**TEAM_A, "max_concurrent_requests": 2}, TEAM_B]
    with serve({"keys": keys}, environ=ENVIRON) as (url, app), ExitStack() as streams:
        limiter = app.state.access.limiter
        first = streams.enter_context(open_passthrough_stream(url, A))
        streams.enter_context(open_passthrough_stream(url, A))
        assert limiter.held("key:team-a", "requests") == 2
        for stream in (False, True):
            for model in ("fake/judge", "fusion"):
                refused = httpx.post(f"{url}/v1/chat/completions", json=chat_body(model, stream=stream), headers=A)
                assert_429(refused, "concurrency_limited", max_retry_after=1)
        responses = httpx.post(f"{url}/v1/responses", json={"model": "fake/judge", "input": "Hi"}, headers=A)
        assert_429(responses, "concurrency_limited", max_retry_after=1)
        messages = httpx.post(
            f"{url}/v1/messages",
            json={"model": "fake/judge", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]},
            headers=A,
        )
        assert messages.status_code == 429 and messages.json()["error"]["type"] == "rate_limit_error"
        assert messages.json()["type"] == "error"  # Anthropic's shape on its surface
        # Other keys have their own; a client that leaves gives its slot back.
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/judge"), headers=B).status_code == 200
        first.close()
        wait_until(lambda: limiter.held("key:team-a", "requests") == 1)
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/judge"), headers=A).status_code == 200
    assert limiter.held("key:team-a", "requests") == 0


@pytest.mark.parametrize("limit", ["max_concurrent_fusion", "max_concurrent_requests"])
def test_concurrent_limits_across_two_replicas_sharing_redis(
    limit: str, upstream: FakeUpstream, serve: Serve, redis_prefix: str, redis_client: redis.Redis
) -> None:
    """Fusion runs (held open by a slow panel), or model-calling requests of any kind (pass-through streams held open
    by a slow provider), counted once across two replicas."""
    slow_panel(upstream)
    upstream.script("slow", Script(chunks=["Hello", " there"], chunk_interval_s=5))
    if limit == "max_concurrent_fusion":
        hold, refused_body, kind = open_fusion_stream, chat_body("fusion", stream=True), "fusion"
    else:
        hold, refused_body, kind = open_passthrough_stream, chat_body("fake/judge"), "requests"
    access = {"keys": [{**TEAM_A, limit: 2}], "redis_url": REDIS_URL, "limits": {"redis_prefix": redis_prefix}}
    leases = f"{{{redis_prefix}}}:{kind}:key:team-a"
    with serve(access, environ=ENVIRON) as (url_a, _), serve(access, environ=ENVIRON) as (url_b, _):
        with ExitStack() as streams:
            on_a = streams.enter_context(hold(url_a, A))
            streams.enter_context(hold(url_b, A))
            for url in (url_a, url_b):
                refused = httpx.post(f"{url}/v1/chat/completions", json=refused_body, headers=A)
                assert_429(refused, "concurrency_limited", max_retry_after=1)
            on_a.close()
            wait_until(lambda: redis_client.zcard(leases) == 1)
            streams.enter_context(hold(url_b, A))
            assert redis_client.zcard(leases) == 2
        wait_until(lambda: redis_client.zcard(leases) == 0)


class FakeActivityStore:
    """An activity store as far as access control uses it."""

    def __init__(self, spent: float | Exception | None) -> None:
        self.spent = spent
        self.asked: list[str | None] = []

    async def ping(self) -> None:
        """Reachable."""

    async def spent_today(self, key_name: str | None) -> float | None:
        self.asked.append(key_name)
        if isinstance(self.spent, Exception):
            raise self.spent
        return self.spent


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC) - now).total_seconds()


def test_daily_spend_cap(upstream: FakeUpstream, serve: Serve) -> None:
    keys = [{**TEAM_A, "daily_spend_usd": 5.0}, TEAM_B]
    with serve({"keys": keys}, environ=ENVIRON, pricing=fake_prices()) as (url, app):
        store = app.state.activity_store = FakeActivityStore(4.99)

        def post(key: dict[str, str]) -> httpx.Response:
            return httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion"), headers=key)

        assert post(A).status_code == 200
        store.spent = 5.0
        for body in (chat_body("fusion"), chat_body("fake/a", stream=True)):
            refused = httpx.post(f"{url}/v1/chat/completions", json=body, headers=A)
            retry_after = assert_429(refused, "spend_limited", max_retry_after=86_400)
            assert abs(retry_after - seconds_to_midnight()) < 5
            assert "$5.00" in refused.json()["error"]["message"]
        assert post(B).status_code == 200  # team-b has no cap: its spend is not even asked for
        assert httpx.get(f"{url}/v1/models", headers=A).status_code == 200  # reading is not spending
        for unknown in (None, RuntimeError("database down")):
            store.spent = unknown
            assert post(A).status_code == 200  # unknown spend never blocks
        assert set(store.asked) == {"team-a"}


def test_a_global_spend_cap_asks_for_all_traffic(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"limits": {"daily_spend_usd": 1.0}}, pricing=fake_prices()) as (url, app):
        store = app.state.activity_store = FakeActivityStore(0.5)
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion")).status_code == 200
        store.spent = 1.5
        assert_429(
            httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion")), "spend_limited", max_retry_after=86_400
        )
        assert store.asked == [None, None]


def test_a_spend_cap_without_an_activity_store_is_not_enforced(
    upstream: FakeUpstream, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    with serve({"limits": {"daily_spend_usd": 1.0}}) as (url, _):
        for _ in range(2):
            assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a")).status_code == 200
    warnings = [r for r in caplog.records if "daily_spend_usd" in r.getMessage()]
    assert len(warnings) == 1


def test_a_limit_store_outage_is_503_in_openai_format(upstream: FakeUpstream, serve: Serve) -> None:
    from .test_limiters import closed_port

    access = {"keys": [{**TEAM_A, "requests_per_minute": 5}], "redis_url": f"redis://:pw-x@127.0.0.1:{closed_port()}"}
    with serve(access, environ=ENVIRON) as (url, _):
        started = time.monotonic()
        response = httpx.get(f"{url}/v1/models", headers=A)
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limits_unavailable"
        assert "pw-x" not in response.text
        # On /v1/messages too, in Anthropic's shape: an outage of a store, not load, so no overloaded_error (which
        # Anthropic pairs with 529) but 503 api_error.
        body = {"model": "fake/a", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
        messages = httpx.post(f"{url}/v1/messages", json=body, headers=A, timeout=10)
        assert messages.status_code == 503 and messages.json()["error"]["type"] == "api_error", messages.text
        assert "pw-x" not in messages.text


def test_a_spend_cap_is_enforced_from_the_activity_store(
    upstream: FakeUpstream, serve: Serve, tmp_path: pathlib.Path
) -> None:
    upstream.script("a", Script(cost=2.5))  # the provider reports what each call cost
    access = {"keys": [{**TEAM_A, "daily_spend_usd": 1.0}]}
    activity = {"enabled": True, "path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}

    with serve(access, environ=ENVIRON, activity=activity, pricing=fake_prices()) as (url, _):
        first = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A, timeout=10)
        assert first.status_code == 200

        def refused() -> bool:
            response = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A, timeout=10)
            return response.status_code == 429

        wait_until(refused, timeout=5)  # once the first call's $2.50 is recorded, team-a is over its $1 day
        blocked = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=A)
    assert blocked.json()["error"]["code"] == "spend_limited" and int(blocked.headers["retry-after"]) > 0
