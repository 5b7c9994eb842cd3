"""DRACO's grading arithmetic: rubric score, pass rate, and the summary statistics of a report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def rubric_score(verdicts: Sequence[tuple[float, bool]]) -> float:
    """Score of one graded answer from `(weight, met)` pairs, in [0, 1].

    raw = Σ weight of MET criteria (a MET negative criterion subtracts); score = raw / Σ positive
    weights, clamped to [0, 1]. A rubric without positive weights starts at 1 and loses its share
    of Σ|negative| per error: 1 + raw / Σ|negative|, clamped.
    """
    raw = sum(weight for weight, met in verdicts if met)
    positive = sum(weight for weight, _ in verdicts if weight > 0)
    if positive > 0:
        return _clamp(raw / positive)
    negative = sum(-weight for weight, _ in verdicts if weight < 0)
    if negative > 0:
        return _clamp(1.0 + raw / negative)
    return 0.0  # no weight at all: nothing could be earned


def pass_rate(verdicts: Sequence[tuple[float, bool]]) -> float:
    """Share of criteria passed: a positive one MET, a negative one UNMET."""
    if not verdicts:
        return 0.0
    passed = sum(1 for weight, met in verdicts if met != (weight < 0))
    return passed / len(verdicts)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0 for no values."""
    return sum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least q% of values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
