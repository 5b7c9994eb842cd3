"""Time limits on the activity database hold while PostgreSQL is cut off by a network partition.

A partition drops packets and sends no RST: a query simply gets no answer. Each wait on the database has a
limit (the readiness probe's, the result cache's `timeout_s`, the stored responses'); past it psycopg, cancelled
once, would ask the server to cancel the query and wait ~10 s more for an answer that never comes. The real
`openfusion serve` runs against the real PostgreSQL through `partition.PartitionProxy`, cut mid-run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.partition import PartitionProxy, through
from e2e.processes import HI, provider_config, serve
from fakes.upstream import FakeUpstream
from openfusion.api.activity import READ_TIMEOUT_S
from openfusion.api.health import _PROBE_TIMEOUT_S
from openfusion.api.responses.keeper import _TIMEOUT_S as STORED_RESPONSE_TIMEOUT_S

pytestmark = pytest.mark.e2e

# What a request may take past its limits (a fusion run against the fake upstream, a busy machine); psycopg's
# wait for a cancellation the server never answers is ~10 s more per call, well past it.
SLACK_S = 2.5
CACHE_TIMEOUT_S = 1.0
# The activity writer's limit, which a response's end waits for (record_before_end, on with PostgreSQL).
WRITE_TIMEOUT_S = 1.0
ACTIVITY = f"[activity]\nwrite_timeout_s = {WRITE_TIMEOUT_S}\n\n"
CALLS_PER_FUSION = 5  # three panelists, the judge, the synthesizer


@contextmanager
def _server_behind_partition(
    upstream_url: str, presets_dir: Path, tmp_path: Path, postgres_url: str, *, extra: str = ""
) -> Iterator[tuple[PartitionProxy, Any]]:
    """`openfusion serve` on PostgreSQL through a proxy the test can partition, and the proxy."""
    with PartitionProxy(("127.0.0.1", 5432)) as proxy:
        env = {"DATABASE_URL": through(proxy, postgres_url)}
        with serve(provider_config(upstream_url, extra=extra), presets_dir, tmp_path, env=env) as served:
            yield proxy, served


def _timed(send: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = send()
    return response, time.monotonic() - started


def _warnings(log: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [line for line in log if line["level"] == "warning" and text in line["message"]]


def test_readyz_reports_the_database_not_ready_within_its_probe_limit(
    fake_upstream: Any, presets_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    _, upstream_url = fake_upstream
    with _server_behind_partition(upstream_url, presets_dir, tmp_path, postgres_url) as (proxy, served):
        ready = httpx.get(f"{served.url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        proxy.partition()
        response, took = _timed(lambda: httpx.get(f"{served.url}/readyz", timeout=60))
        log = served.log()

    assert proxy.dropped > 0  # the fault happened: the probe's bytes went into the partition
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": {"providers": "ok", "activity_store": "timeout"}}
    assert _warnings(log, "activity_store did not answer")
    # The probe's limit and a fraction of a second; not psycopg's ~10 s more.
    assert took < _PROBE_TIMEOUT_S + SLACK_S, f"/readyz took {took:.1f} s"


def test_a_cached_fusion_runs_as_a_miss_within_the_caches_limits_when_the_database_is_cut_off(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """The result cache on the activity database (`backend = "database"`): the lookup and the write each give up
    at `timeout_s`, the request runs and is answered, a miss."""
    _, upstream_url = fake_upstream
    extra = f'{ACTIVITY}[cache]\nbackend = "database"\ntimeout_s = {CACHE_TIMEOUT_S}\n'
    body = {"model": "fusion", "messages": HI, "plugins": [{"id": "fusion", "cache": {"ttl_s": 600}}]}
    with _server_behind_partition(upstream_url, presets_dir, tmp_path, postgres_url, extra=extra) as (proxy, served):
        chat = f"{served.url}/v1/chat/completions"
        first = httpx.post(chat, json=body, timeout=30)
        assert (first.status_code, first.headers["x-openfusion-cache"]) == (200, "miss"), first.text
        assert httpx.post(chat, json=body, timeout=30).headers["x-openfusion-cache"] == "hit"
        proxy.partition()
        calls = len(upstream.calls)
        response, took = _timed(lambda: httpx.post(chat, json=body, timeout=60))
        log = served.log()

    assert proxy.dropped > 0
    assert response.status_code == 200, response.text
    assert response.headers["x-openfusion-cache"] == "miss"  # the kept run could not be read: the request ran
    assert len(upstream.calls) == calls + CALLS_PER_FUSION
    assert _warnings(log, "result cache lookup failed") and _warnings(log, "result cache write failed")
    # The lookup's limit, the write's, the record's (record_before_end) and room; not ~10 s more per call.
    bound = 2 * CACHE_TIMEOUT_S + WRITE_TIMEOUT_S + SLACK_S
    assert took < bound, f"the request took {took:.1f} s (bound {bound} s)"


def test_stored_responses_keep_their_documented_outcomes_within_their_limit_when_the_database_is_cut_off(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """`store: true` still completes (the failed write is logged); a follow-up whose `previous_response_id`
    cannot be read gets a clear 503 in OpenAI's shape. Each within the stored responses' limit."""
    _, upstream_url = fake_upstream
    with _server_behind_partition(upstream_url, presets_dir, tmp_path, postgres_url, extra=ACTIVITY) as (proxy, served):
        responses = f"{served.url}/v1/responses"
        first = httpx.post(responses, json={"model": "fusion", "input": "Hi", "store": True}, timeout=30)
        assert first.status_code == 200, first.text
        proxy.partition()
        ask = {"model": "fusion", "input": "Why?", "store": True}
        stored, store_took = _timed(lambda: httpx.post(responses, json=ask, timeout=60))
        follow_up = {"model": "fusion", "input": "And then?", "previous_response_id": first.json()["id"]}
        refused, read_took = _timed(lambda: httpx.post(responses, json=follow_up, timeout=60))
        log = served.log()

    assert proxy.dropped > 0
    assert stored.status_code == 200, stored.text
    assert stored.json()["status"] == "completed" and stored.json()["store"] is True
    assert _warnings(log, f"could not store response {stored.json()['id']}")
    # The write's limit and the record's (record_before_end), and room; not ~10 s more.
    bound = STORED_RESPONSE_TIMEOUT_S + WRITE_TIMEOUT_S + SLACK_S
    assert store_took < bound, f"store: true took {store_took:.1f} s (bound {bound} s)"

    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "activity_store_unavailable" and error["type"] == "server_error"
    assert error["message"] == "The activity store is unavailable; try again later."
    bound = STORED_RESPONSE_TIMEOUT_S + SLACK_S
    assert read_took < bound, f"the follow-up took {read_took:.1f} s (bound {bound} s)"


def test_the_activity_api_answers_503_within_its_read_limit_when_the_database_is_cut_off(
    fake_upstream: Any, presets_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """Without a limit, the read waited as long as the database stayed silent (TCP gives up after minutes)."""
    _, upstream_url = fake_upstream
    with _server_behind_partition(upstream_url, presets_dir, tmp_path, postgres_url) as (proxy, served):
        activity = f"{served.url}/v1/activity"
        assert httpx.get(activity, timeout=30).status_code == 200
        proxy.partition()
        response, took = _timed(lambda: httpx.get(activity, timeout=READ_TIMEOUT_S + 20))
        log = served.log()

    assert proxy.dropped > 0
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "activity_store_unavailable"
    assert _warnings(log, "reading activity: no answer from the activity database")
    bound = READ_TIMEOUT_S + SLACK_S
    assert took < bound, f"GET /v1/activity took {took:.1f} s (bound {bound} s)"
