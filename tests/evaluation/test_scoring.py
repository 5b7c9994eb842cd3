"""DRACO's grading arithmetic against scores computed by hand."""

from __future__ import annotations

import pytest

from openfusion.evaluation.scoring import pass_rate, percentile, rubric_score

# fin-1 of the fixture: +10, +5, -10, +5 (Σ positive = 20).
FIN1 = [10.0, 5.0, -10.0, 5.0]


def verdicts(weights: list[float], met: list[bool]) -> list[tuple[float, bool]]:
    return list(zip(weights, met, strict=True))


def test_score_is_met_weight_over_positive_weight() -> None:
    # MET: +10 and +5 (the +5 table is missed, the -10 error avoided): 15 / 20.
    assert rubric_score(verdicts(FIN1, [True, True, False, False])) == pytest.approx(0.75)


def test_a_met_negative_criterion_subtracts_its_weight() -> None:
    # MET: +10, +5 and the -10 error: (10 + 5 - 10) / 20 = 0.25.
    assert rubric_score(verdicts(FIN1, [True, True, True, False])) == pytest.approx(0.25)


def test_score_is_clamped_at_zero() -> None:
    # med-1: +20, +10, -50 all MET: raw -20 / 30 would be -0.667.
    assert rubric_score(verdicts([20, 10, -50], [True, True, True])) == 0.0
    # Only the error MET: -10 / 20 would be -0.5.
    assert rubric_score(verdicts(FIN1, [False, False, True, False])) == 0.0


def test_score_reaches_exactly_one_and_no_more() -> None:
    assert rubric_score(verdicts(FIN1, [True, True, False, True])) == 1.0
    assert rubric_score(verdicts([-10, -30], [False, False])) == 1.0


def test_all_negative_rubric_starts_at_one() -> None:
    # med-2: -10 and -30 (Σ|neg| = 40). One error of 10: 1 - 10/40 = 0.75; of 30: 0.25; both: 0.
    assert rubric_score(verdicts([-10, -30], [True, False])) == pytest.approx(0.75)
    assert rubric_score(verdicts([-10, -30], [False, True])) == pytest.approx(0.25)
    assert rubric_score(verdicts([-10, -30], [True, True])) == 0.0


def test_a_rubric_without_weight_scores_zero() -> None:
    assert rubric_score(verdicts([0.0], [True])) == 0.0
    assert rubric_score([]) == 0.0


def test_pass_rate_counts_positive_met_and_negative_unmet() -> None:
    # +10 MET (pass), +5 UNMET (fail), -10 UNMET (pass), +5 UNMET (fail): 2 of 4.
    assert pass_rate(verdicts(FIN1, [True, False, False, False])) == 0.5
    # -10 MET (fail), -30 UNMET (pass): 1 of 2.
    assert pass_rate(verdicts([-10, -30], [True, False])) == 0.5
    # +6 UNMET (fail), +3 MET (pass), -5 UNMET (pass): 2 of 3.
    assert pass_rate(verdicts([6, 3, -5], [False, True, False])) == pytest.approx(2 / 3)
    assert pass_rate([]) == 0.0


def test_nearest_rank_percentiles() -> None:
    latencies = [300.0, 100.0, 200.0]
    assert percentile(latencies, 50) == 200.0  # rank ceil(1.5) = 2
    assert percentile(latencies, 95) == 300.0  # rank ceil(2.85) = 3
    assert percentile([float(n) for n in range(1, 21)], 95) == 19.0  # rank ceil(19.0) = 19
    assert percentile([5.0], 50) == 5.0
    assert percentile([], 50) is None
