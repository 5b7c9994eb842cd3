"""A metric series' updates bound once: its values written without prometheus_client's checks on every update.

`Histogram.observe` checks, on every call, that the histogram is a series and not a parent waiting for its labels,
then looks for the bucket in a Python loop; `Counter.inc` and `Gauge.inc` check their series (and a counter its
amount, and whether an exemplar came) the same way. None of that can change once a series is made. What those
methods then update are the series' value objects (`MutexValue`, or under several workers `MmapedValue`, which
writes the worker's file): the functions here update the same objects in the same order, a histogram's bucket
found with `bisect` (the first bound not below the amount, as the loop finds it), so /metrics and the
multiprocess files show exactly what the public methods would have made them show. Where a prometheus_client
release keeps its values elsewhere, the public methods are used.

The amounts given are what the public methods accept without complaint: a counter's never negative, no NaN.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

Update = Callable[[float], None]


def observer(histogram: Any) -> Update:
    """`histogram.observe` for a histogram series (an unlabelled histogram, or a labelled one's child)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    buckets = getattr(histogram, "_buckets", None)
    if (
        not isinstance(bounds, list)
        or not isinstance(buckets, list)
        or total is None
        or len(bounds) != len(buckets)
        or not bounds
        or bounds[-1] != math.inf
    ):
        return histogram.observe  # type: ignore[no-any-return]
    bounds, buckets = tuple(bounds), tuple(buckets)
    add_to_sum = total.inc

    def observe(amount: float) -> None:
        add_to_sum(amount)
        buckets[bisect_left(bounds, amount)].inc(1)

    return observe


def incrementer(series: Any) -> Update:
    """`series.inc` for a counter or gauge series (unlabelled, or a labelled one's child); a gauge's goes below zero
    with a negative amount."""
    value = getattr(series, "_value", None)
    inc = getattr(value, "inc", None)
    if inc is None or getattr(series, "_is_most_recent", False):  # a `mostrecent` gauge refuses inc
        return series.inc  # type: ignore[no-any-return]
    return inc  # type: ignore[no-any-return]
