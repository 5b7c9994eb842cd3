"""The private directory of one server's multiprocess metrics: made empty at start, removed at exit.

prometheus_client's multiprocess mode keeps each process's values in files of one directory, and adds
up every file it finds there: two servers sharing a directory would report each other's requests, and
files left by an earlier run would count again. Each `openfusion serve --workers N` therefore makes its
own (`openfusion-metrics-<pid>-<start>-*` in the temporary directory, `TMPDIR`), removes it when it exits,
and at start removes those of servers that are gone (killed before they could).

A server is known by its pid and its start time (in clock ticks since boot, from /proc where there is
one): a pid alone is no proof of life, since it comes round again, and always so for a container's
PID 1, which its restarted server gets again with the container's /tmp. A directory named in the older
`<pid>-*` form is a gone server's when its pid is dead or is this server's own (which names its own with
its start time); under any other live pid it is left alone.
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
        pid = os.getpid()
        started = _start_time(pid)
        owner = f"{pid}-{started}" if started is not None else str(pid)
        return cls(Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{owner}-", dir=base)))

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
        owner = _owner(path)
        if owner is None or not _gone(*owner) or not path.is_dir() or path.stat().st_uid != os.getuid():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed the metrics directories of %d server(s) no longer running", len(removed))
    return removed


def _owner(path: Path) -> tuple[int, int | None] | None:
    """The pid and start time of the server that made a directory (None: no start time in its name); None when the
    name is not one a server makes (`<pid>-<start>-<random>` or, older, `<pid>-<random>`; no `-` in the random)."""
    parts = path.name[len(_PREFIX) :].split("-")
    if len(parts) not in (2, 3) or not all(part.isdigit() for part in parts[:-1]):
        return None
    return int(parts[0]), int(parts[1]) if len(parts) == 3 else None


def _gone(pid: int, started: int | None) -> bool:
    """Whether the server `pid` started at `started` no longer runs: no such pid, or another process holds it now."""
    if not _alive(pid):
        return True
    if started is None:  # an older name: only this server's own pid is known to be another process's
        return pid == os.getpid()
    now = _start_time(pid)
    return now is not None and now != started


def _start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux's /proc); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return int(fields[19])  # field 22 of the whole line
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
