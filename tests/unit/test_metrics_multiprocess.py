"""Metrics of several worker processes in one directory: the activity gauges each worker publishes, added up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from openfusion.observability.metrics_dir import MetricsDirectory

# A worker: prometheus_client imported with PROMETHEUS_MULTIPROC_DIR set, an activity writer with these
# counters, published once; prints its pid and what /metrics would show.
WORKER = """
import asyncio, sys
from pathlib import Path
from openfusion.activity.writer import WriterStats
from openfusion.observability.metrics import Metrics

class Writer:
    stats = WriterStats(written=0, dropped=int(sys.argv[2]), failed=int(sys.argv[4]), queued=int(sys.argv[3]),
                        set_aside=int(sys.argv[4]))

async def main():
    metrics = Metrics(Path(sys.argv[1]))
    metrics.in_flight.inc()
    task = metrics.watch_activity(Writer())
    await asyncio.sleep(0.1)
    task.cancel()
    print(metrics.render().decode())

asyncio.run(main())
"""


def _worker(directory: Path, *, dropped: int, queued: int, set_aside: int = 0) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    command = [sys.executable, "-c", WORKER, str(directory), str(dropped), str(queued), str(set_aside)]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def _value(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def test_activity_gauges_of_every_worker_add_up_and_a_dead_workers_backlog_goes(tmp_path: Path) -> None:
    directory = MetricsDirectory.create(tmp_path)
    _worker(directory.path, dropped=3, queued=2, set_aside=1)
    text = _worker(directory.path, dropped=1, queued=5)
    assert _value(text, "openfusion_activity_dropped") == 5  # both workers' drops (and the record set aside)
    assert _value(text, "openfusion_activity_set_aside") == 1
    assert _value(text, "openfusion_activity_queued") == 7
    assert _value(text, "openfusion_requests_in_flight") == 2
    for path in directory.path.glob("gauge_livesum_*.db"):  # both workers have exited
        directory.worker_exited(int(path.stem.rsplit("_", 1)[1]))
    text = _worker(directory.path, dropped=0, queued=1)
    assert _value(text, "openfusion_activity_dropped") == 5  # drops stay counted after a worker is gone
    assert _value(text, "openfusion_activity_set_aside") == 1
    assert _value(text, "openfusion_activity_queued") == 1  # a dead worker's backlog is not waiting anymore
    assert _value(text, "openfusion_requests_in_flight") == 1
