"""The supervisor's crash-loop rule: worker exits counted within a sliding window, N workers times the limit."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.settings import Settings
from openfusion.workers import supervisor
from openfusion.workers.serve import ServeOptions
from openfusion.workers.supervisor import Supervisor


def _exits_at(times: list[float], monkeypatch: pytest.MonkeyPatch, **settings: Any) -> list[bool]:
    """Whether the supervisor gives up at each exit, the exits happening at these times."""
    workers = Supervisor(Settings(**settings), ServeOptions(), count=2)
    verdicts = []
    for now in times:
        monkeypatch.setattr(supervisor.time, "monotonic", lambda now=now: now)
        verdicts.append(workers._dying())
    return verdicts


def test_exits_older_than_the_window_no_longer_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # limit 2 with 2 workers: the 4th exit within 100 s stops the server.
    assert _exits_at([0, 10, 20, 150, 160, 170], monkeypatch, worker_restart_limit=2, worker_restart_window_s=100) == [
        False, False, False, False, False, False,
    ]  # fmt: skip
    assert _exits_at([0, 10, 20, 30], monkeypatch, worker_restart_limit=2, worker_restart_window_s=100) == [
        False, False, False, True,
    ]  # fmt: skip


def test_a_limit_of_0_replaces_workers_however_often_they_die(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not any(_exits_at([float(t) for t in range(50)], monkeypatch, worker_restart_limit=0))
