"""`openfusion serve` settles the heap before serving: start-up objects frozen, young collections rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from openfusion.workers.serve import settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_what_exists_and_raises_the_young_threshold(restored_gc: None) -> None:
    survivor = [object() for _ in range(100)]  # a start-up structure, alive while the server runs

    settle_heap()

    assert gc.get_freeze_count() >= len(survivor)  # no later collection walks the start-up objects
    # Young collections wait for growth beyond what many requests in flight hold (~600 objects per streamed fusion),
    # not every 700 allocations.
    assert gc.get_threshold()[0] >= 50_000
