"""The gateway topology as processes: 3 replicas x 2 workers behind nginx, sharing PostgreSQL and Redis.

Each replica is a real `openfusion serve --workers 2` in its own process group; nginx (Debian's) runs
docker/'s server block (least connections, unbuffered streams, `proxy_next_upstream error timeout`);
activity goes to one PostgreSQL database, limits and spend reservations to one Redis (a prefix of
this run's own); the providers are the fake upstream on loopback; clients are the official openai SDK.
Under a steady load one replica is killed (SIGKILL to its whole process group), as a crashed host
or an OOM-killed pod would be.

Slow (about a minute on 2 cores): marked `topology`, deselected from the fast suite, run by .ci/run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest

from e2e.gateway import Link, nginx, nginx_binary
from e2e.processes import Served, free_port
from fakes.upstream import FakeUpstream, Script

pytestmark = [pytest.mark.e2e, pytest.mark.topology]

LOAD_KEY, TEAM_KEY, CAPPED_KEY = "sk-load-0123456789abcdef", "sk-team-0123456789abcdef", "sk-capped-0123456789abcd"
ENVIRON = {"LOAD_KEY": LOAD_KEY, "TEAM_KEY": TEAM_KEY, "CAPPED_KEY": CAPPED_KEY}
HI = [{"role": "user", "content": "Hi"}]
CENT = 0.01  # USD per completion token of the synthesizer: ten tokens cost $0.10
FULL = {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}
SPEND_CAP = 0.35
REQUEST_TIMEOUT_S = 30.0  # the client's bound; every request must end well within it
START_S = 90.0  # six workers importing openfusion at once on a shared 2-core machine


def _config(upstream_url: str, *, redis_url: str, prefix: str) -> str:
    prices = "".join(
        f'[pricing.models."fake/{m}"]\nprompt = 0.0\ncompletion = {CENT if m == "synth" else 0.0}\n'
        "max_completion_tokens = 1000\n\n"
        for m in ("a", "b", "c", "judge", "synth")
    )
    return (
        f'default_preset = "trio"\nshutdown_grace_s = 5\nredis_url = "{redis_url}"\n\n'
        f'[limits]\nredis_prefix = "{prefix}"\n\n'
        # A long batching window: without record_before_end a killed replica would take seconds of records with it.
        "[activity]\nflush_interval_s = 5.0\n\n"
        f"{prices}"
        '[[keys]]\nname = "load"\nkey_env = "LOAD_KEY"\nadmin = true\n\n'
        '[[keys]]\nname = "team"\nkey_env = "TEAM_KEY"\nmax_concurrent_fusion = 2\n\n'
        f'[[keys]]\nname = "capped"\nkey_env = "CAPPED_KEY"\ndaily_spend_usd = {SPEND_CAP}\n\n'
        f'[[providers]]\nname = "fake"\nbase_url = "{upstream_url}/v1"\nmodels = ["fake/*"]\nstrip_prefix = true\n'
    )


def _launch(config: str, presets: Path, workdir: Path, *, workers: int, env: dict[str, str]) -> Served:
    workdir.mkdir(parents=True)
    (workdir / "openfusion.toml").write_text(config)
    port = free_port()
    config_path = workdir / "openfusion.toml"
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--port", str(port),
               "--config", str(config_path), "--presets", str(presets), "--workers", str(workers)]  # fmt: skip
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    return Served(f"http://127.0.0.1:{port}", process, log_path)


def _kill(served: Served) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(served.process.pid, signal.SIGKILL)  # the supervisor and its workers at once
    served.process.wait(timeout=10)


@contextmanager
def _replicas(
    count: int, config: str, presets: Path, base: Path, *, workers: int, env: dict[str, str]
) -> Iterator[list[Served]]:
    """`count` replicas started together, each serving with all its workers; killed (their groups) on exit."""
    replicas: list[Served] = []
    try:
        for n in range(count):
            replicas.append(_launch(config, presets, base / f"replica-{n}", workers=workers, env=env))
        for served in replicas:
            if workers > 1:  # the supervisor logs each worker serving
                served.wait_serving(workers, timeout=START_S)
            deadline = time.monotonic() + START_S
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                        break
                assert served.process.poll() is None, served.log_text()
                assert time.monotonic() < deadline, served.log_text()
                time.sleep(0.1)
        yield replicas
    finally:
        for served in replicas:
            _kill(served)


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    generation_id: str | None = None  # set when the client saw the request succeed
    error: str | None = None


def _refused(url: str) -> None:
    """Wait until the port of `url` refuses connections."""
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30  # a busy machine has taken 11 s to tear down a killed group's last process
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        except ConnectionResetError:  # taken into the backlog of a listening socket the dying process then closed
            pass
        assert time.monotonic() < deadline, f"{url} still takes connections"
        time.sleep(0.005)


def _report(line: str) -> None:
    """What the test checked, for the CI log (pytest -rP shows it)."""
    print(line)  # noqa: T201


def _one(client: openai.OpenAI, kind: str) -> Outcome:
    """One request as an application makes it; succeeded only if the SDK saw a whole, finished answer."""
    model = "fusion/trio" if kind.startswith("fusion") else "fake/a"
    started = time.monotonic()
    try:
        if kind.endswith("stream"):
            raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, stream=True)
            finish = None
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            assert finish == "stop", f"a stream ended without its finish: {finish}"
        else:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=HI)
            assert raw.parse().choices[0].message.content
        return Outcome(kind, started, time.monotonic(), generation_id=raw.headers["x-generation-id"])
    except (openai.APIError, httpx.TransportError) as exc:  # what a client sees of a replica that died
        return Outcome(kind, started, time.monotonic(), error=f"{type(exc).__name__}: {exc}"[:200])


def _stored(database_url: str, ids: list[str]) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id FROM generations WHERE id = ANY(%s)", (ids,)).fetchall()
    return {row[0] for row in rows}


def _codes(responses: list[httpx.Response]) -> list[tuple[int, str]]:
    return sorted((r.status_code, r.json()["error"]["code"] if r.status_code != 200 else "") for r in responses)


def _fire(urls: list[str], key: str, count: int, **body: Any) -> list[httpx.Response]:
    """`count` fusion requests at once, spread over `urls` in turn, each on its own connection."""

    def post(i: int) -> httpx.Response:
        payload = {"model": "fusion/trio", "messages": HI, **body}
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=payload, headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(post, range(count)))


def test_three_replicas_behind_nginx_survive_losing_one(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    binary = nginx_binary()
    assert binary, "nginx is needed for the topology test: apt-get install nginx"
    _, upstream_url = fake_upstream
    config = _config(upstream_url, redis_url="redis://127.0.0.1:6379/0", prefix=redis_prefix)
    env = {**ENVIRON, "DATABASE_URL": postgres_url}
    with (
        _replicas(3, config, presets_dir, tmp_path, workers=2, env=env) as replicas,
        nginx(binary, [r.url.removeprefix("http://") for r in replicas], tmp_path / "nginx") as gateway,
    ):
        urls = [r.url for r in replicas]

        # Per-key concurrency across replicas: two fusion runs at once for the team, whichever replica gets them.
        for model in "abc":
            upstream.script(model, Script(delay_s=2.0))
        team = _fire(urls, TEAM_KEY, 6)
        assert _codes(team) == [(200, "")] * 2 + [(429, "concurrency_limited")] * 4, [r.text for r in team]
        refusers = {urls[i % 3] for i, r in enumerate(team) if r.status_code == 429}
        assert len(refusers) >= 2  # refused by replicas that ran none of the team's runs themselves
        _report(f"concurrency: 6 runs at once over 3 replicas, limit 2: {_codes(team)}")

        # One daily spend cap across replicas: $0.10 at worst (and exactly) per request, $0.35 a day.
        for model in "abc":
            upstream.script(model, Script(delay_s=1.0))
        upstream.script("synth", Script(usage=FULL))
        capped = _fire(urls, CAPPED_KEY, 9, max_tokens=10)
        assert _codes(capped) == [(200, "")] * 3 + [(429, "spend_limited")] * 6, [r.text for r in capped]
        with psycopg.connect(postgres_url) as conn:
            deadline = time.monotonic() + 15
            while True:
                query = "SELECT cost FROM generations WHERE key_name = 'capped' AND status = 'ok'"
                rows = conn.execute(query).fetchall()
                if len(rows) == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        spent = sum(row[0] for row in rows)
        assert len(rows) == 3 and spent == pytest.approx(0.30) and spent <= SPEND_CAP
        _report(f"spend cap: 9 requests at once over 3 replicas, ${SPEND_CAP} cap: 3 served, spent ${spent:.2f}")

        # Steady load through nginx, then one replica killed with requests in flight on it.
        upstream.reset()
        upstream.script("judge", Script(content=json.dumps({"consensus": ["blue"]})))
        for model in "abc":
            upstream.script(model, Script(delay_s=0.4))
        upstream.script("synth", Script(chunks=["The ", "sky ", "is ", "blue."], chunk_interval_s=0.1))
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=LOAD_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S)
        kinds = ["fusion", "fusion-stream", "pass", "pass-stream"]
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load(n: int) -> None:
            i = n
            while not stop.is_set():
                outcome = _one(client, kinds[i % len(kinds)])
                with lock:
                    outcomes.append(outcome)
                i += 1

        victim = replicas[0]
        with ThreadPoolExecutor(max_workers=9) as pool:
            try:
                for n in range(9):
                    pool.submit(load, n)
                time.sleep(3.0)
                killing = time.monotonic()
                _kill(victim)
                _refused(victim.url)
                killed_at = time.monotonic()  # gone: until its last process exits, its socket takes connections
                time.sleep(4.0)
            finally:
                stop.set()  # whatever failed above, the load ends (the pool waits for it)
        client.close()

        before = [o for o in outcomes if o.ended < killing]
        in_flight = [o for o in outcomes if o.started <= killed_at and o.ended >= killing]
        after = [o for o in outcomes if o.started > killed_at]
        assert all(o.generation_id for o in before), [o.error for o in before if o.error]
        # New requests go to the replicas left: nginx skips the one that refuses connections.
        assert after and all(o.generation_id for o in after), [
            (o.error, round(o.started - killed_at, 3)) for o in after if o.error
        ]
        # Those the dead replica was serving end at once with an error the client can see (no hang).
        failed = [o for o in in_flight if o.error]
        assert failed, "no request was in flight on the killed replica: the load is too light"
        assert all(o.ended - killed_at < 2.0 for o in failed), [(o.kind, o.ended - killed_at) for o in failed]
        assert all(o.ended - o.started < REQUEST_TIMEOUT_S / 2 for o in outcomes)
        # Every request the client saw succeed is recorded in PostgreSQL, the killed replica's included.
        succeeded = [o.generation_id for o in outcomes if o.generation_id]
        deadline = time.monotonic() + 10
        while (missing := set(succeeded) - _stored(postgres_url, succeeded)) and time.monotonic() < deadline:
            time.sleep(0.2)
        lost = sorted(missing)
        served_by_victim = [line for line in gateway.access_log() if f"upstream={victim.url[7:]}" in line]
        _report(
            f"failover: {len(outcomes)} requests over 7 s; 1 of 3 replicas (2 workers each) SIGKILLed at 3 s, "
            f"refusing connections {killed_at - killing:.2f} s later; {len(in_flight)} requests in flight, "
            f"{len(failed)} of them on it (ended with: "
            f"{sorted({o.error.split(':')[0] for o in failed if o.error})}); {len(after)} started after it, all "
            f"served; {len(succeeded)} successes, {len(lost)} without a record in PostgreSQL; "
            f"{len(served_by_victim)} nginx log lines name the killed replica"
        )
        assert not lost, f"{len(lost)} completed request(s) have no activity record: {lost[:5]}"
        assert served_by_victim  # the killed replica had its share before it died
        # nginx's 502s all come from the killed replica: the others never failed a request.
        bad_gateway = [line for line in gateway.access_log() if line.split()[2] == "502"]
        assert all(line in served_by_victim for line in bad_gateway), bad_gateway


def test_readyz_follows_the_replica_s_database_and_redis(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    """One replica reaches PostgreSQL and Redis through links of its own; cut, it is not ready; mended, it is."""
    _, upstream_url = fake_upstream
    to_postgres, to_redis = Link(("127.0.0.1", 5432)), Link(("127.0.0.1", 6379))
    config = _config(upstream_url, redis_url=f"redis://127.0.0.1:{to_redis.port}/0", prefix=redis_prefix)
    env = {**ENVIRON, "DATABASE_URL": postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{to_postgres.port}")}

    def ready() -> tuple[int, dict[str, str]]:
        response = httpx.get(f"{served.url}/readyz", timeout=10)
        return response.status_code, response.json()["checks"]

    def becomes(status: int, **checks: str) -> None:
        deadline = time.monotonic() + 15
        while (seen := ready()) != (status, {"providers": "ok", **checks}):
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)

    try:
        with _replicas(1, config, presets_dir, tmp_path, workers=1, env=env) as (served,):
            becomes(200, activity_store="ok", limits_store="ok")
            to_redis.cut()
            becomes(503, activity_store="ok", limits_store="unreachable")
            assert httpx.get(f"{served.url}/healthz").status_code == 200  # alive: out of rotation, not restarted
            to_redis.mend()
            becomes(200, activity_store="ok", limits_store="ok")
            to_postgres.cut()
            status, checks = ready()
            assert status == 503 and checks["limits_store"] == "ok"
            assert checks["activity_store"] in ("unreachable", "timeout")  # refused, or a pool still waiting
            to_postgres.mend()
            becomes(200, activity_store="ok", limits_store="ok")
            _report(
                "readyz of a replica: Redis cut -> 503 (limits_store unreachable); PostgreSQL cut -> 503 "
                f"(activity_store {checks['activity_store']}); each mended -> 200; /healthz 200 throughout"
            )
    finally:
        to_postgres.cut()
        to_redis.cut()
