"""A server's private multiprocess metrics directory: new and empty at start, stale ones removed, gone at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from openfusion.observability.metrics_dir import MetricsDirectory, remove_stale


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_new_directory_removes_only_those_of_servers_gone(tmp_path: Path) -> None:
    gone = tmp_path / f"openfusion-metrics-{_dead_pid()}-abc"
    running = tmp_path / f"openfusion-metrics-{os.getppid()}-def"  # the test runner's parent: alive
    unrelated = tmp_path / "openfusion-metrics-cache"
    for path in (gone, running, unrelated):
        path.mkdir()
        (path / "counter_7.db").write_bytes(b"x")
    directory = MetricsDirectory.create(tmp_path)
    assert not gone.exists() and running.exists() and unrelated.exists()
    assert directory.path.parent == tmp_path and directory.path.name.startswith(f"openfusion-metrics-{os.getpid()}-")
    assert list(directory.path.iterdir()) == []
    assert remove_stale(tmp_path) == []
    directory.remove()
    assert not directory.path.exists()


def test_a_dead_workers_live_gauges_go_and_its_counters_stay(tmp_path: Path) -> None:
    directory = MetricsDirectory.create(tmp_path)
    names = ["counter_41.db", "histogram_41.db", "gauge_livesum_41.db", "gauge_sum_41.db", "gauge_livesum_42.db"]
    for name in names:
        (directory.path / name).write_bytes(b"x")
    directory.worker_exited(41)
    left = sorted(path.name for path in directory.path.iterdir())
    assert left == ["counter_41.db", "gauge_livesum_42.db", "gauge_sum_41.db", "histogram_41.db"]


def test_a_directory_whose_pid_another_process_has_now_is_removed(tmp_path: Path) -> None:
    """A pid comes round again (a container's PID 1 always): a live pid whose start time is not the one in the name
    is another process's now, and the directory a gone server's; under its real start time it is kept."""
    parent = os.getppid()  # alive, and not this process: the server that made the directories
    with open(f"/proc/{parent}/stat") as stat:
        started = int(stat.read().rsplit(")", 1)[1].split()[19])
    reused = tmp_path / f"openfusion-metrics-{parent}-{started + 1}-abc"
    live = tmp_path / f"openfusion-metrics-{parent}-{started}-def"
    older_own_pid = tmp_path / f"openfusion-metrics-{os.getpid()}-ghi"  # an earlier version's, under this pid
    for path in (reused, live, older_own_pid):
        path.mkdir()
        (path / "counter_7.db").write_bytes(b"x")
    directory = MetricsDirectory.create(tmp_path)
    assert not reused.exists() and not older_own_pid.exists() and live.exists()
    assert remove_stale(tmp_path) == [], "this server's own directory is kept"
    assert directory.path.exists()
