"""SIGTERM while PostgreSQL is cut off by a network partition: the server still stops in bounded time.

A partition sends no RST: the activity writer's connections stay open and its write simply never gets
an answer. The real `openfusion serve` runs with the default activity settings against the real
PostgreSQL, through a proxy (`partition.PartitionProxy`) that stops forwarding mid-run.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from e2e.partition import PartitionProxy, through
from e2e.processes import Served, fusion, provider_config, serve
from fakes.upstream import FakeUpstream, wait_until

pytestmark = pytest.mark.e2e

GRACE_S = 2.0
# What a stop may take past the grace period: the activity writer's last flush and the pool's close, with room.
BOUND_S = GRACE_S + 5.0
CALLS_PER_FUSION = 5  # three panelists, the judge, the synthesizer


def _fusions_in_background(url: str, count: int) -> tuple[list[threading.Thread], list[httpx.Response]]:
    responses: list[httpx.Response] = []

    def run() -> None:
        responses.append(fusion(url, timeout=60))

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, responses


def _stop(served: Served) -> float:
    """SIGTERM, then the seconds until the process exited (it is killed past the bound and a minute more)."""
    sent = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    try:
        served.process.wait(timeout=BOUND_S + 60)
    except subprocess.TimeoutExpired:
        served.process.kill()
    return time.monotonic() - sent


def _stored(postgres_url: str, ids: list[str]) -> set[str]:
    """Which of these generations PostgreSQL holds, asked directly (not through the proxy)."""
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id FROM generations WHERE id = ANY(%s)", (ids,)).fetchall()
    return {row[0] for row in rows}


def _lost(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The activity writers' lines about lost generations (one per worker that lost any)."""
    return [line for line in log if line["logger"] == "openfusion.activity" and "lost" in line["message"]]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_with_postgresql_partitioned_stops_within_the_bound_and_counts_the_lost_records(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str, workers: int
) -> None:
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, grace_s=GRACE_S)
    args = ("--workers", str(workers)) if workers > 1 else ()
    with PartitionProxy(("127.0.0.1", 5432)) as proxy:
        env = {"DATABASE_URL": through(proxy, postgres_url)}
        with serve(config, presets_dir, tmp_path, args=args, env=env) as served:
            if workers > 1:
                served.wait_serving(workers)
            before = [fusion(served.url).headers["x-generation-id"] for _ in range(2)]
            assert _stored(postgres_url, before) == set(before)  # written (record_before_end is on with PostgreSQL)

            proxy.partition()
            threads, responses = _fusions_in_background(served.url, 3)
            wait_until(lambda: len(upstream.calls) == 5 * CALLS_PER_FUSION, timeout=10)
            wait_until(lambda: proxy.dropped > 0, timeout=5)  # the writer's write went into the partition
            stopped_after = _stop(served)
            for thread in threads:
                thread.join(10)
            log = served.log()

        assert stopped_after <= BOUND_S, f"openfusion serve took {stopped_after:.1f} s to stop (bound {BOUND_S} s)"
        after = [response.headers["x-generation-id"] for response in responses]
        assert len(after) == 3 and all(response.status_code == 200 for response in responses)
        lost = _lost(log)  # "activity store not written to in time at shutdown: 3 generation(s) lost (...)"
        assert {line["level"] for line in lost} == {"warning"}
        assert sum(int(re.findall(r"(\d+) generation\(s\) lost", line["message"])[0]) for line in lost) == 3, lost
        assert len(lost) <= workers  # one line per worker
        assert not [line for line in log if line["level"] in ("error", "critical") or "exception" in line], log
    # The fault happened: the proxy dropped the writer's bytes, and the later records never reached PostgreSQL.
    assert proxy.dropped > 0
    assert _stored(postgres_url, before + after) == set(before)


def test_a_capped_keys_request_is_not_held_by_a_spend_read_postgresql_never_answers(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """A daily spend cap reads today's spend from the activity store: partitioned, the read gets no answer, and
    the request goes on once SPEND_READ_TIMEOUT_S has passed (the spend unknown, as in an outage)."""
    from openfusion.access.control import SPEND_READ_TIMEOUT_S

    _, upstream_url = fake_upstream
    extra = (
        "[activity]\nwrite_timeout_s = 1.0\n\n"
        '[pricing.models."fake/plain"]\nprompt = 0.0\ncompletion = 0.01\nmax_completion_tokens = 100\n\n'
        '[[keys]]\nname = "capped"\nkey_env = "CAPPED_KEY"\ndaily_spend_usd = 100.0\n'
    )
    key = "sk-capped-0123456789abcdef"
    ask = {"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    with PartitionProxy(("127.0.0.1", 5432)) as proxy:
        env = {"DATABASE_URL": through(proxy, postgres_url), "CAPPED_KEY": key}
        with serve(provider_config(upstream_url, extra=extra), presets_dir, tmp_path, env=env) as served:
            chat = f"{served.url}/v1/chat/completions"
            assert httpx.post(chat, json=ask, headers=headers, timeout=30).status_code == 200
            proxy.partition()
            started = time.monotonic()
            response = httpx.post(chat, json=ask, headers=headers, timeout=60)
            took = time.monotonic() - started
            log = served.log()

    assert response.status_code == 200, response.text
    assert proxy.dropped > 0  # the fault happened: the database's bytes went into the partition
    [read] = [line for line in log if "could not read today's spend" in line["message"]]
    assert "TimeoutError" in read["message"]
    # The spend read's limit, the record's wait (write_timeout_s) and room; not psycopg's ~10 s more per read.
    assert took < SPEND_READ_TIMEOUT_S + 1.0 + 5.0, f"the request took {took:.1f} s"
