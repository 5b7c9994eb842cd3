"""The private directory of one server's multiprocess metrics: made empty at start, removed at exit.

prometheus_client's multiprocess mode keeps each process's values in files of one directory, and adds
up every file it finds there: two servers sharing a directory would report each other's requests, and
files left by an earlier run would count again. Each `openfusion serve --workers N` therefore makes its
own (`openfusion-metrics-<pid>-*` in the temporary directory, `TMPDIR`), removes it when it exits, and
at start removes those of servers that are gone (killed before they could).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger("openfusion")

_PREFIX = "openfusion-metrics-"


class MetricsDirectory:
    """One server's metrics directory, for its workers (PROMETHEUS_MULTIPROC_DIR) and their supervisor."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, base: Path | None = None) -> MetricsDirectory:
        """A new, empty directory under `base` (the temporary directory), after removing stale ones."""
        base = base or Path(tempfile.gettempdir())
        remove_stale(base)
        return cls(Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)))

    def worker_exited(self, pid: int) -> None:
        """Forget a worker's live gauges (its requests in flight, its backlog); its counters stay counted."""
        mark_process_dead(pid, str(self.path))

    def remove(self) -> None:
        """Delete the directory and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)


def remove_stale(base: Path) -> list[Path]:
    """Remove the metrics directories of this user's servers that no longer run; returns them."""
    removed = []
    for path in base.glob(f"{_PREFIX}*"):
        owner = _server_pid(path)
        if owner is None or _alive(owner) or not path.is_dir() or path.stat().st_uid != os.getuid():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed the metrics directories of %d server(s) no longer running", len(removed))
    return removed


def _server_pid(path: Path) -> int | None:
    pid = path.name[len(_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
