"""`openfusion serve --workers N`: several processes on one port, supervised, adding up to one server.

Which worker accepts a connection is the kernel's choice (a hash over the workers' sockets); to put a
request on a given worker, connections are made until that worker accepts one (`Served.only`), and the
`worker` field of each `request finished` log line shows who served it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.processes import HI, accepted_by, alive, fusion, holds, metric, provider_config, serve, tcp_sockets
from fakes.upstream import FakeUpstream, Script, wait_until

pytestmark = pytest.mark.e2e

FUSION_OK = {"route": "fusion/trio", "status": "ok"}


def _activity_rows(path: Path) -> list[tuple[str, str | None]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute("SELECT status, failure_reason FROM generations").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []


def _metrics_dirs(base: Path) -> list[Path]:
    return sorted(base.glob("openfusion-metrics-*"))


def test_two_workers_add_up_to_one_server(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """Requests served by either worker: one count in /metrics (whichever worker answers), every record kept."""
    _, upstream_url = fake_upstream
    activity, tmp = tmp_path / "activity.sqlite3", tmp_path / "tmp"
    tmp.mkdir()
    config = provider_config(upstream_url, extra=f'[activity]\npath = "{activity}"\n')
    with serve(config, presets_dir, tmp_path, args=("--workers", "2"), env={"TMPDIR": str(tmp)}) as served:
        pids = served.wait_serving(2)
        assert len(set(pids.values())) == 2 and served.process.pid not in pids.values()
        per_worker = {1: 3, 2: 2}
        for number, count in per_worker.items():
            with served.only(pids[number], pids):
                for _ in range(count):
                    assert fusion(served.url).status_code == 200
        # A request's record (its log line among it) is closed just after its last byte has left.
        wait_until(lambda: served.finished_by_worker() == per_worker, timeout=5)
        assert served.finished_by_worker() == per_worker  # each worker served its share
        for number in (1, 2, 1, 2):  # every worker's /metrics counts every worker's requests
            with served.only(pids[number], pids):
                text = httpx.get(f"{served.url}/metrics", timeout=10).text
            assert metric(text, "openfusion_requests_total", **FUSION_OK) == 5
            assert metric(text, "openfusion_upstream_call_seconds_count", role="panel") == 15
            assert metric(text, "openfusion_requests_in_flight") == 0
        wait_until(lambda: len(_activity_rows(activity)) == 5, timeout=10)  # both workers wrote to one SQLite file
        (private,) = _metrics_dirs(tmp)
        assert any(private.glob("counter_*.db"))
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0
    assert _metrics_dirs(tmp) == []  # removed at exit
    assert "Traceback" not in served.log_text()


def test_connections_of_one_client_reach_every_worker_on_its_own_socket(
    fake_upstream: Any, presets_dir: Path, tmp_path: Path
) -> None:
    """Each worker listens on a socket of its own, so the kernel spreads one client's many connections over all
    of them; a killed worker's socket goes with it (no connection waits where nobody accepts), and its
    replacement listens on a new one."""
    _, upstream_url = fake_upstream
    with serve(provider_config(upstream_url), presets_dir, tmp_path, args=("--workers", "2")) as served:
        pids = served.wait_serving(2)
        listening = tcp_sockets(served.port, state="0A")
        assert len(listening) == 2 and all(len(holds(pid, listening)) == 1 for pid in pids.values())
        assert not holds(served.process.pid, listening)  # the supervisor keeps no copy
        assert _accepted(served.port, pids, count=40) == set(pids.values())  # 40 connections, every worker has some
        killed_socket, kept_socket = holds(pids[1], listening), holds(pids[2], listening)
        os.kill(pids[1], signal.SIGKILL)
        # The killed worker's socket goes (once its last thread has exited: the process may show as a zombie
        # before); the survivor's stays, and a replacement may already listen beside it.
        wait_until(lambda: not alive(pids[1]) and not killed_socket & tcp_sockets(served.port, state="0A"), timeout=10)
        assert kept_socket <= tcp_sockets(served.port, state="0A")
        replaced = served.wait_serving(2, excluding=frozenset({pids[1]}))
        assert len(tcp_sockets(served.port, state="0A")) == 2
        assert _accepted(served.port, replaced, count=40) == set(replaced.values())


_SLOW_START = """
import os, sys, time
if "--multiprocessing-fork" in sys.argv:  # a worker, not the supervisor: the first of them starts late
    try:
        os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pass
    else:  # held until the test opens the gate (a fixed delay could end before a loaded machine starts the other)
        deadline = time.monotonic() + 120
        while not os.path.exists({gate!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def test_a_worker_that_starts_late_still_gets_its_share_of_the_first_connections(
    fake_upstream: Any, presets_dir: Path, tmp_path: Path
) -> None:
    """The first workers' sockets listen from the start: a client that connects as soon as the server answers (a
    load balancer's keep-alive pool, a benchmark) has its connections spread over every worker, those on a worker
    still starting waiting for it, not all of them held for their whole life by the worker that was up first."""
    _, upstream_url = fake_upstream
    site = tmp_path / "site"
    site.mkdir()
    gate = tmp_path / "gate"
    (site / "sitecustomize.py").write_text(_SLOW_START.format(marker=str(tmp_path / "late"), gate=str(gate)))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    # The connections carry no request: a loaded machine may take longer than the default 10 s header timeout to
    # start the held worker, and the first worker would close those it accepted before they are counted.
    idle = "[server]\nheader_timeout_s = 600\nkeep_alive_timeout_s = 600\n"
    config = provider_config(upstream_url, extra=idle)
    with serve(config, presets_dir, tmp_path, args=("--workers", "2"), env=env) as served:
        assert len(served.serving()) == 1  # the server answers; the other worker is held before it starts
        clients = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(40)]
        try:
            assert len(served.serving()) == 1  # every connection was made while one worker served
            gate.touch()
            pids = served.wait_serving(2)
            assert {accepted_by(client, set(pids.values()), timeout=20) for client in clients} == set(pids.values())
        finally:
            for client in clients:
                client.close()


def test_a_port_another_server_listens_on_with_so_reuseport_is_refused(tmp_path: Path) -> None:
    """The workers' sockets share the port with each other only: not with a server that happens to listen there."""
    config = tmp_path / "openfusion.toml"
    config.write_text("builtin_providers = false\n")
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--config", str(config),
                   "--workers", "2", "--port", str(port)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def _accepted(port: int, pids: dict[int, int], *, count: int) -> set[int]:
    """The workers that accepted `count` connections opened at once by one client."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        return {accepted_by(client, set(pids.values())) for client in clients}
    finally:
        for client in clients:
            client.close()


def _in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["response"] = fn()
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_killed_worker_is_replaced_and_its_requests_leave_the_gauge(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL a worker mid-request: its client gets an error at once, a new worker takes its place, and
    /metrics no longer counts its request in flight (the dead worker's live gauges are forgotten)."""
    _, upstream_url = fake_upstream
    upstream.script("slow", Script(delay_s=60))
    with serve(provider_config(upstream_url), presets_dir, tmp_path, args=("--workers", "2")) as served:
        pids = served.wait_serving(2)
        with served.only(pids[1], pids):
            body = {"model": "fake/slow", "messages": HI}
            post = lambda: httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=60)  # noqa: E731
            thread, result = _in_background(post)
            wait_until(lambda: len(upstream.calls_for("slow")) == 1, timeout=20)
        assert metric(httpx.get(f"{served.url}/metrics").text, "openfusion_requests_in_flight") == 1
        os.kill(pids[1], signal.SIGKILL)
        thread.join(10)
        assert not thread.is_alive() and isinstance(result.get("error"), httpx.TransportError), result
        replaced = served.wait_serving(2, excluding=frozenset({pids[1]}))
        assert replaced[2] == pids[2] and replaced[1] != pids[1] and not alive(pids[1])
        for number in (1, 2):  # read before any new request: one just answered may still count until its record closes
            with served.only(replaced[number], replaced):
                text = httpx.get(f"{served.url}/metrics", timeout=10).text
            assert metric(text, "openfusion_requests_in_flight") == 0
        for number in (1, 2):
            with served.only(replaced[number], replaced):
                assert fusion(served.url).status_code == 200
        wait_until(lambda: served.finished_by_worker() == {1: 1, 2: 1}, timeout=5)  # recorded after the last byte
        assert served.finished_by_worker() == {1: 1, 2: 1}
        assert "exited with status -9" in served.log_text()


def _request(url: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        result["status"] = response.status_code
        result["text"] = response.read().decode()
    return result


def test_sigterm_drains_every_worker_with_the_grace_period(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM to the supervisor: on each worker, a request that fits the grace period finishes, the rest end
    with `server_shutting_down` (an error chunk in a stream, a 503 otherwise), and every one is recorded."""
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=60))
    upstream.script("slow", Script(delay_s=60))
    upstream.script("quick", Script(content="Done in time.", delay_s=3))
    activity = tmp_path / "activity.sqlite3"
    config = provider_config(upstream_url, grace_s=6, extra=f'[activity]\npath = "{activity}"\n')
    bodies = [
        {"model": "fusion", "messages": HI, "stream": True},
        {"model": "fake/slow", "messages": HI},
        {"model": "fake/quick", "messages": HI},
    ]
    with serve(config, presets_dir, tmp_path, args=("--workers", "2")) as served:
        pids = served.wait_serving(2)
        requests = []
        for number in (1, 2):
            with served.only(pids[number], pids):
                for body in bodies:
                    requests.append(_in_background(lambda body=body: _request(served.url, body)))
                wait_until(lambda n=number: len(upstream.calls) == n * 5, timeout=20)
        sent = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=40) == 0
        stopped = time.monotonic() - sent
        for thread, _ in requests:
            thread.join(15)
        assert not any(alive(pid) for pid in pids.values())
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{served.url}/healthz", timeout=2)
    assert 6 <= stopped < 6 + 10, stopped  # the grace period, then a few seconds to end and record
    results = [result for _, result in requests]
    assert all("response" in result for result in results), results
    for stream, plain, quick in (results[:3], results[3:]):
        assert quick["response"]["status"] == 200 and "Done in time." in quick["response"]["text"]
        assert plain["response"]["status"] == 503 and "server_shutting_down" in plain["response"]["text"]
        assert stream["response"]["status"] == 200
        assert '"code":"server_shutting_down"' in stream["response"]["text"].replace(" ", "")
        assert stream["response"]["text"].rstrip().endswith("data: [DONE]")
    assert served.finished_by_worker() == {1: 3, 2: 3}
    rows = sorted(_activity_rows(activity), key=str)
    assert rows == sorted([("ok", None)] * 2 + [("error", "server_shutting_down")] * 4, key=str)


LIMITED_KEYS = """
[[keys]]
name = "rate"
key_env = "RATE_KEY"
requests_per_minute = 3

[[keys]]
name = "solo"
key_env = "SOLO_KEY"
max_concurrent_fusion = 1
"""
RATE = {"Authorization": "Bearer sk-rate-test-7d2e4f9a"}
SOLO = {"Authorization": "Bearer sk-solo-test-7d2e4f9a"}
KEYS_ENV = {"RATE_KEY": "sk-rate-test-7d2e4f9a", "SOLO_KEY": "sk-solo-test-7d2e4f9a"}


def test_limits_hold_across_workers_through_redis(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """A key's requests per minute and concurrent fusion runs are counted once, whichever worker serves it."""
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=60))
    top = f'redis_url = "redis://127.0.0.1:6379/0"\n[limits]\nredis_prefix = "{redis_prefix}"\n'
    config = provider_config(upstream_url, top=top, extra=LIMITED_KEYS)
    with serve(config, presets_dir, tmp_path, args=("--workers", "2"), env=KEYS_ENV) as served:
        pids = served.wait_serving(2)
        statuses = []
        for number in (1, 2, 1, 2):
            with served.only(pids[number], pids):
                statuses.append(httpx.get(f"{served.url}/v1/models", headers=RATE, timeout=10).status_code)
        assert statuses == [200, 200, 200, 429]
        with served.only(pids[1], pids):
            thread, _ = _in_background(lambda: fusion(served.url, headers=SOLO))
            wait_until(lambda: len(upstream.calls) == 3, timeout=20)
        with served.only(pids[2], pids):
            refused = fusion(served.url, headers=SOLO)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limited"
        os.killpg(served.process.pid, signal.SIGKILL)
        thread.join(10)


def test_several_workers_without_redis_refuse_per_key_limits(presets_dir: Path, tmp_path: Path) -> None:
    """In-process counters would let each worker admit a key's whole limit: start-up says so and stops."""
    done = _serve_limited_keys(tmp_path, "--workers", "3", "--port", "1")
    assert done.returncode == 2, done.stderr
    assert "workers = 3 needs Redis" in done.stderr
    assert "key 'rate' requests_per_minute, key 'solo' max_concurrent_fusion" in done.stderr
    assert "sk-rate-test-7d2e4f9a" not in done.stderr + done.stdout


def test_workers_stop_by_themselves_when_their_supervisor_is_killed(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL to the supervisor alone: its workers notice, run their grace period and exit, freeing the port."""
    _, upstream_url = fake_upstream
    with serve(provider_config(upstream_url, grace_s=1), presets_dir, tmp_path, args=("--workers", "2")) as served:
        pids = served.wait_serving(2)
        served.process.kill()
        served.process.wait(timeout=10)
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=30)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{served.url}/healthz", timeout=2)
    assert served.log_text().count("Application shutdown complete.") == 2  # a graceful stop, not a kill


def test_each_server_counts_in_its_own_metrics_directory(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """Two servers on one host, even given one PROMETHEUS_MULTIPROC_DIR, never add up each other's requests;
    a directory left by a server that was killed is removed at the next start."""
    _, upstream_url = fake_upstream
    tmp, shared = tmp_path / "tmp", tmp_path / "shared"
    tmp.mkdir()
    shared.mkdir()
    stale = tmp / f"openfusion-metrics-{_dead_pid()}-left"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"\0" * 16)
    env = {"TMPDIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    config = provider_config(upstream_url)
    with (
        serve(config, presets_dir, tmp_path / "a", args=("--workers", "2"), env=env) as first,
        serve(config, presets_dir, tmp_path / "b", args=("--workers", "2"), env=env) as second,
    ):
        first.wait_serving(2)
        second.wait_serving(2)
        for _ in range(2):
            assert fusion(first.url).status_code == 200
        assert fusion(second.url).status_code == 200
        assert metric(httpx.get(f"{first.url}/metrics").text, "openfusion_requests_total", **FUSION_OK) == 2
        assert metric(httpx.get(f"{second.url}/metrics").text, "openfusion_requests_total", **FUSION_OK) == 1
        assert not stale.exists() and len(_metrics_dirs(tmp)) == 2
    assert list(shared.iterdir()) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_worker_killed_at_the_end_of_the_shutdown_makes_the_exit_status_4(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A worker that outlives the grace period and its backstop is killed, and work may be lost with it: the
    supervisor's exit status says so (4), where a clean drain exits 0."""
    _, upstream_url = fake_upstream
    with serve(provider_config(upstream_url, grace_s=1), presets_dir, tmp_path, args=("--workers", "2")) as served:
        pids = served.wait_serving(2)
        os.kill(pids[1], signal.SIGSTOP)  # a worker that cannot stop (stuck, or frozen): it ignores SIGTERM
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 4
        assert not alive(pids[1]) and not alive(pids[2])
    assert f"worker 1 (pid {pids[1]}) still running past the grace period: killed" in served.log_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_to_the_process_group_drains_as_sigterm_does(
    workers: str, fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A closed terminal or a dropped SSH session sends SIGHUP to the whole process group: the server and each
    worker stop as on SIGTERM (the request in flight finishes, exit status 0), not at once by its default action."""
    _, upstream_url = fake_upstream
    upstream.script("quick", Script(content="Done in time.", delay_s=2))
    config = provider_config(upstream_url, grace_s=10)
    with serve(config, presets_dir, tmp_path, args=("--workers", workers)) as served:
        if workers == "2":
            served.wait_serving(2)
        thread, result = _in_background(lambda: _request(served.url, {"model": "fake/quick", "messages": HI}))
        wait_until(lambda: len(upstream.calls_for("quick")) == 1, timeout=20)
        os.killpg(served.process.pid, signal.SIGHUP)
        assert served.process.wait(timeout=30) == 0, served.log_text()
        thread.join(10)
    assert result["response"]["status"] == 200 and "Done in time." in result["response"]["text"], result
    assert served.log_text().count("Application shutdown complete.") == int(workers)
    assert "Traceback" not in served.log_text()


def test_more_workers_than_the_setting_allows_is_a_usage_error(tmp_path: Path) -> None:
    """`--workers` has the bound of `workers` (512): a typo must not start thousands of processes. (The config's
    per-key limits stop start-up anyway should the flag be taken: without Redis it may run one worker only.)"""
    done = _serve_limited_keys(tmp_path, "--workers", "5000", "--port", "0")
    assert done.returncode == 2, done.stderr
    assert "argument --workers: expected a number of workers (1 to 512) or 'auto', not '5000'" in done.stderr


def _serve_limited_keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`openfusion serve` with per-key limits and no Redis, and `args`, run until it exits."""
    config = tmp_path / "openfusion.toml"
    config.write_text(f"builtin_providers = false\n{LIMITED_KEYS}")
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--config", str(config), *args]
    return subprocess.run(command, env={**os.environ, **KEYS_ENV}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_refused_before_the_app_starts(workers: str, tmp_path: Path) -> None:
    """One worker or several: a port in use exits 1 saying so, before the app's start-up (stores opened,
    migrations run) and not, with one worker, after it with uvicorn's status 3."""
    config = tmp_path / "openfusion.toml"
    config.write_text(f'builtin_providers = false\n[activity]\npath = "{tmp_path / "activity.sqlite3"}"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--config", str(config),
                   "--workers", workers, "--port", str(port), "--log-format", "text"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Waiting for application startup" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "activity.sqlite3").exists()


def test_port_0_is_one_free_port_for_every_worker(tmp_path: Path) -> None:
    """`--port 0` (any free port) with several workers: one port, chosen once and logged, on which every worker
    listens; each used to bind port 0 itself and get a port of its own, while the log said ":0"."""
    config = tmp_path / "openfusion.toml"
    config.write_text("builtin_providers = false\n[activity]\nenabled = false\n")
    log_path = tmp_path / "serve.log"
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--config", str(config),
               "--workers", "2", "--port", "0", "--log-format", "text"]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: log_path.read_text().count("is serving") == 2, timeout=60)
        text = log_path.read_text()
        port = int(text.split("2 workers on 127.0.0.1:", 1)[1].split()[0])
        assert port != 0
        pids = {int(line.split("(pid ")[1].split(")")[0]) for line in text.splitlines() if "is serving" in line}
        listening = tcp_sockets(port, state="0A")
        assert len(listening) == 2 and all(holds(pid, listening) for pid in pids), text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_workers_that_keep_dying_after_a_good_start_stop_the_server(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """Workers that serve, then die, again and again: once they have died `worker_restart_limit` times each within the
    window, the supervisor stops the rest and exits 5, for systemd or Kubernetes to restart it (it used to replace
    them forever)."""
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, grace_s=1, top="worker_restart_limit = 1\nworker_restart_window_s = 600\n")
    with serve(config, presets_dir, tmp_path, args=("--workers", "2", "--log-format", "text")) as served:
        wait_until(lambda: len(served_pids(served.log_text())) == 2, timeout=60)
        os.kill(served_pids(served.log_text())[1], signal.SIGKILL)  # one death: the limit is 1 per worker, 2 for both
        wait_until(lambda: len(served_pids(served.log_text())) == 3, timeout=60)  # replaced, and serving again
        assert served.process.poll() is None
        os.kill(served_pids(served.log_text())[2], signal.SIGKILL)
        served.process.wait(timeout=30)
        text = served.log_text()
    assert served.process.returncode == 5, text
    assert "workers keep dying: 2 exits within 600 s (worker_restart_limit = 1 for 2 workers): stopping" in text, text
    assert not any(alive(pid) for pid in served_pids(text).values())


def served_pids(text: str) -> dict[int, int]:
    """Every worker that said it serves, in order: the nth such line -> its pid (text log lines)."""
    pids = [int(line.split("(pid ")[1].split(")")[0]) for line in text.splitlines() if line.endswith("is serving")]
    return dict(enumerate(pids, start=1))


def _pid_namespaces() -> bool:
    """Whether this host lets a test start a process as PID 1 of its own PID namespace, as a container runtime does."""
    try:
        command = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
        return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _pid_namespaces(), reason="needs unshare --pid (root, or user namespaces)")
def test_a_restarted_container_removes_the_metrics_directory_of_its_killed_server(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """The supervisor as PID 1 of a container, killed, then started again with the same /tmp: its pid is 1 again,
    so the killed server's directory looked alive and was never removed; it is now, and only that one."""
    _, upstream_url = fake_upstream
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    config = tmp_path / "openfusion.toml"
    config.write_text(provider_config(upstream_url, grace_s=1))
    openfusion = str(Path(sys.executable).parent / "openfusion")

    def container() -> tuple[subprocess.Popen[bytes], Path]:
        port = _free_port()
        command = ["unshare", "--pid", "--fork", "--mount-proc", openfusion, "serve", "--workers", "2", "--port",
                   str(port), "--config", str(config), "--presets", str(presets_dir)]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True)  # fmt: skip

        def up() -> bool:
            assert process.poll() is None, "the server exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=60)
        return process, next(iter(set(_metrics_dirs(tmp)) - set(before)))

    before: list[Path] = []
    first, killed_dir = container()
    try:
        assert killed_dir.name.startswith("openfusion-metrics-1-")  # made by PID 1
        os.killpg(first.pid, signal.SIGKILL)  # the container is killed: its PID 1 and every worker at once
        first.wait(timeout=10)
        assert killed_dir.exists()
        before = _metrics_dirs(tmp)
        second, own_dir = container()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    try:
        assert own_dir.name.startswith("openfusion-metrics-1-")
        assert _metrics_dirs(tmp) == [own_dir], "the killed server's directory is gone, the running one's kept"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
