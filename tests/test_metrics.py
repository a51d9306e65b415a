"""Tests for metrics.py: recall at a target precision, on vectors whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.metrics import (
    PrecisionRecallPoint,
    check_target_precision,
    format_threshold,
    recall_at_precision,
    validation_score,
)


def brute_force(targets: np.ndarray, scores: np.ndarray, target_precision: float) -> PrecisionRecallPoint:
    """Try every distinct score as the threshold (``score >= t`` is valid) and apply the rules."""
    targets = np.asarray(targets).astype(int)
    if targets.sum() == 0:
        return PrecisionRecallPoint(float("inf"), 0.0, 0.0, False)
    points = []
    for threshold in np.unique(scores):
        called = scores >= threshold
        true_positives = int((called & (targets == 1)).sum())
        points.append((threshold, true_positives / called.sum(), true_positives / targets.sum()))
    meeting = [p for p in points if p[1] >= target_precision - 1e-12]
    if meeting:  # highest recall, then highest precision, then highest threshold
        threshold, precision, recall = max(meeting, key=lambda p: (p[2], p[1], p[0]))
        return PrecisionRecallPoint(float(threshold), float(precision), float(recall), True)
    threshold, precision, recall = max(points, key=lambda p: (p[1], p[2], p[0]))
    return PrecisionRecallPoint(float(threshold), float(precision), float(recall), False)


def test_perfect_separation_reaches_full_recall_at_the_lowest_positive_score():
    point = recall_at_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.9)
    assert point == PrecisionRecallPoint(threshold=0.8, precision=1.0, recall=1.0, reached=True)


def test_tied_scores_cannot_be_split():
    # at 0.5 one valid and one invalid image enter together: 2/3 precision, so only 0.9 reaches 0.9
    point = recall_at_precision([1, 1, 0], [0.9, 0.5, 0.5], 0.9)
    assert point == PrecisionRecallPoint(threshold=0.9, precision=1.0, recall=0.5, reached=True)


# thresholds: 0.9 -> P 1, R 1/3; 0.7 (a tie of a valid and an invalid) -> P 2/3, R 2/3;
# 0.4 -> P 3/4, R 1; 0.2 -> P 3/5, R 1
TARGETS = [1, 1, 0, 1, 0]
SCORES = [0.9, 0.7, 0.7, 0.4, 0.2]


@pytest.mark.parametrize(
    ("target_precision", "expected"),
    [
        (0.9, PrecisionRecallPoint(0.9, 1.0, 1 / 3, True)),
        (0.75, PrecisionRecallPoint(0.4, 0.75, 1.0, True)),  # exactly on the target counts
        # both 0.4 and 0.2 give full recall: the higher precision wins
        (0.5, PrecisionRecallPoint(0.4, 0.75, 1.0, True)),
        (1.0, PrecisionRecallPoint(0.9, 1.0, 1 / 3, True)),
    ],
)
def test_hand_worked_example(target_precision, expected):
    point = recall_at_precision(TARGETS, SCORES, target_precision)
    assert point.reached == expected.reached
    assert point.threshold == pytest.approx(expected.threshold)
    assert point.precision == pytest.approx(expected.precision)
    assert point.recall == pytest.approx(expected.recall)


def test_unreachable_target_falls_back_to_the_highest_precision_threshold():
    # thresholds: 0.9 -> P 0; 0.8 -> P 1/2, R 1/2; 0.7 -> P 1/3; 0.6 -> P 1/2, R 1.
    # nothing reaches 0.9; of the two thresholds with precision 1/2 the one with more recall wins
    point = recall_at_precision([0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6], 0.9)
    assert point == PrecisionRecallPoint(threshold=0.6, precision=0.5, recall=1.0, reached=False)
    assert validation_score([0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6], 0.9)[0] == 0.0


def test_no_positives():
    point = recall_at_precision([0, 0, 0], [0.2, 0.5, 0.9], 0.9)
    assert point == PrecisionRecallPoint(threshold=float("inf"), precision=0.0, recall=0.0, reached=False)
    assert validation_score([0, 0, 0], [0.2, 0.5, 0.9], 0.9) == (0.0, 0.0)


def test_validation_score_is_recall_then_average_precision():
    recall, average_precision = validation_score(TARGETS, SCORES, 0.75)
    assert recall == 1.0
    assert 0.0 < average_precision < 1.0
    assert validation_score([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.9) == (1.0, 1.0)


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_brute_force_scan_over_thresholds(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 30))
    targets = rng.integers(0, 2, size)
    # few distinct values, so most vectors hold ties
    scores = np.round(rng.random(size), int(rng.integers(1, 3)))
    for target_precision in (0.3, 0.5, 0.8, 0.9, 1.0):
        got = recall_at_precision(targets, scores, target_precision)
        expected = brute_force(targets, scores, target_precision)
        assert got.reached == expected.reached
        assert got.threshold == pytest.approx(expected.threshold)
        assert got.precision == pytest.approx(expected.precision)
        assert got.recall == pytest.approx(expected.recall)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, 2])
def test_target_precision_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_target_precision(bad)
    with pytest.raises(ValueError, match="target_precision"):
        recall_at_precision([0, 1], [0.1, 0.9], bad)


def test_the_oracle_and_the_recall_efficiency_say_what_a_threshold_chosen_elsewhere_gave_away():
    from image_classification.metrics import RuleSettings, oracle_recall, recall_efficiency, select_threshold

    targets = np.array([1] * 8 + [0] * 2)
    scores = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45])
    assert oracle_recall(targets, scores, 0.9) == 1.0  # every valid image above both invalid ones
    assert oracle_recall(np.array([0, 1]), np.array([0.9, 0.1]), 0.9) == 0.0  # no threshold reaches the target
    assert recall_efficiency(0.25, 1.0) == 0.25
    assert recall_efficiency(0.9, 0.6) == 1.0  # beyond the oracle only at a precision below the target
    assert recall_efficiency(0.5, 0.0) is None
    # the record of a threshold says what the images it was chosen on allowed
    point = select_threshold(targets, scores, "lower_bound", RuleSettings(0.9))
    validation = point["validation"]
    assert validation["oracle_recall"] == 1.0
    assert validation["recall_efficiency"] == pytest.approx(validation["recall"])


@pytest.mark.parametrize(("threshold", "shown"), [
    (0.99999702, "0.99999702"), (0.9999970197677612, "0.99999702"), (0.5, "0.5"), (0.25, "0.25"),
    (0.7162933945655823, "0.716"), (0.999, "0.999"), (0.0001234, "0.000123"), (1.0, "1.0"), (0.0, "0.0"),
    (-37.98381423950195, "-37.9838"), (None, "n/a"), (float("nan"), "n/a"),
])
def test_a_threshold_is_shown_with_the_digits_that_tell_it_from_one(threshold, shown):
    # a threshold of 0.99999702 printed as "1.0000" reads as "nothing is ever called valid"
    assert format_threshold(threshold) == shown
