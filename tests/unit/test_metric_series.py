"""Series updates bound once write exactly what prometheus_client's own methods write, in one process or several."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from openfusion.observability.series import incrementer, observer

BUCKETS = (0.0005, 0.001, 0.0025, 0.05, 1, 320)
# Below, on and between the bounds, above the last one, zero, negative and infinite.
AMOUNTS = [0.0, -0.5, 0.0005, 0.0004999, 0.00051, 0.001, 0.002, 0.0025, 0.049, 0.05, 0.7, 1.0, 319.9, 320.0, 321.5]
AMOUNTS += [1e9, math.inf, 0.017, 0.0001]


def _count(registry: CollectorRegistry, *, bound: bool) -> None:
    """The same observations and increments, through the bound updates or the public methods."""
    labelled = Histogram("stage_seconds", "Stages.", ["role"], buckets=BUCKETS, registry=registry)
    plain = Histogram("overhead_seconds", "Overhead.", buckets=BUCKETS, registry=registry)
    counter = Counter("requests", "Requests.", ["route", "status"], registry=registry)
    gauge = Gauge("in_flight", "In flight.", registry=registry, multiprocess_mode="livesum")

    def via(series: Any, bind: Callable[[Any], Callable[[float], None]], method: str) -> Callable[[float], None]:
        return bind(series) if bound else getattr(series, method)  # type: ignore[no-any-return]

    panel = via(labelled.labels("panel"), observer, "observe")
    judge = via(labelled.labels("judge"), observer, "observe")
    overhead = via(plain, observer, "observe")
    ok = via(counter.labels("fusion/fast", "ok"), incrementer, "inc")
    flight = via(gauge, incrementer, "inc")
    for i, amount in enumerate(AMOUNTS):
        (panel if i % 3 else judge)(amount)
        overhead(amount / 7)
        ok(i * 0.25)
        flight(1 if i % 2 else -1)


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_one_process_shows_what_the_public_methods_make_it_show() -> None:
    public, bound = CollectorRegistry(), CollectorRegistry()
    _count(public, bound=False)
    _count(bound, bound=True)
    shown = _without_created(generate_latest(bound))
    assert shown == _without_created(generate_latest(public))
    assert 'stage_seconds_bucket{le="0.001",role="panel"} 4.0' in shown  # the buckets, counted as they should be
    assert 'stage_seconds_bucket{le="+Inf",role="judge"} 7.0' in shown


def test_a_worker_of_several_writes_what_the_public_methods_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = []
    for name, bound in (("public", False), ("bound", True)):
        directory = tmp_path / name
        directory.mkdir()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # a worker's: values in its files
        _count(CollectorRegistry(), bound=bound)
        assert list(directory.glob("histogram_*.db")), "counted in the worker's files"
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        shown.append(generate_latest(registry))
    values.close_all_multiprocess_files()
    assert shown[1] == shown[0]
    assert b'stage_seconds_bucket{le="0.001",role="panel"} 4.0' in shown[1]
