"""Choosing the threshold on hand-made scores whose right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from image_classification.metrics import (
    precision_lower_bound,
    recall_at_precision,
    recall_at_precision_bound,
    threshold_counts,
)

# ranked: 1 1 1 | 0 | 1 | 0 0 | 0, with a tie at 0.8 (two valid) and at 0.5 (two invalid)
TARGETS = np.array([1, 1, 1, 0, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.5, 0.1])


def ranked(*blocks: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and strictly decreasing scores for (label, count) blocks, highest score first."""
    targets = np.concatenate([np.full(count, label) for label, count in blocks])
    return targets, np.linspace(0.99, 0.01, len(targets))


# 40 valid, 1 invalid, 2 valid, 21 invalid: precision 42/43 = 0.977 at full recall
SMALL_SET = ranked((1, 40), (0, 1), (1, 2), (0, 21))


def test_threshold_counts_agree_with_scikit_learn():
    thresholds, true_positives, called = threshold_counts(TARGETS, SCORES)
    np.testing.assert_array_equal(thresholds, [0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    np.testing.assert_array_equal(true_positives, [1, 3, 3, 4, 4, 4])
    np.testing.assert_array_equal(called, [1, 3, 4, 5, 7, 8])
    precision, recall, sk_thresholds = precision_recall_curve(TARGETS, SCORES)
    for threshold, p, r in zip(sk_thresholds, precision, recall, strict=False):
        row = np.flatnonzero(thresholds == threshold)[0]
        assert (true_positives[row] / called[row], true_positives[row] / 4) == pytest.approx((p, r))


@pytest.mark.parametrize(("target", "threshold", "precision", "recall"), [
    (0.8, 0.6, 0.8, 1.0),     # 4 of 5 called valid are valid, every valid found
    (0.9, 0.8, 1.0, 0.75),    # the tie at 0.8 is called valid together
    (1.0, 0.8, 1.0, 0.75),
    (0.5, 0.6, 0.8, 1.0),     # equal recall at 0.6, 0.5 and 0.1: the highest precision wins
])
def test_point_rule_picks_the_highest_recall_at_the_target(target, threshold, precision, recall):
    point = recall_at_precision(TARGETS, SCORES, target)
    assert (point.threshold, point.precision, point.recall, point.reached) == (threshold, precision, recall, True)


def test_tied_scores_are_never_split():
    # 0.7 is shared by a valid and an invalid image: a threshold takes both or neither
    point = recall_at_precision(np.array([1, 1, 0, 1]), np.array([0.9, 0.7, 0.7, 0.2]), 0.9)
    assert (point.threshold, point.recall, point.reached) == (0.9, pytest.approx(1 / 3), True)
    thresholds, true_positives, called = threshold_counts(np.array([1, 1, 0, 1]), np.array([0.9, 0.7, 0.7, 0.2]))
    assert (thresholds.tolist(), true_positives.tolist(), called.tolist()) == ([0.9, 0.7, 0.2], [1, 2, 3], [1, 3, 4])


def test_equal_recall_prefers_the_highest_threshold():
    targets, scores = np.array([1, 0, 0, 0]), np.array([0.9, 0.5, 0.4, 0.1])
    assert recall_at_precision(targets, scores, 0.2).threshold == 0.9
    assert recall_at_precision_bound(targets, scores, 0.01).threshold == 0.9


@pytest.mark.parametrize("rule", ["point", "wilson", "clopper_pearson"])
def test_unreachable_target_falls_back_and_says_so(rule):
    targets, scores = np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6])
    if rule == "point":
        point = recall_at_precision(targets, scores, 0.9)
    else:
        point = recall_at_precision_bound(targets, scores, 0.9, method=rule)
    # highest precision (0.5 at 0.8 and at 0.6), then highest recall: 0.6
    assert (point.threshold, point.precision, point.recall, point.reached) == (0.6, 0.5, 1.0, False)


@pytest.mark.parametrize("selector", [recall_at_precision, recall_at_precision_bound])
def test_no_valid_image_means_no_threshold(selector):
    point = selector(np.zeros(4, int), np.array([0.9, 0.5, 0.3, 0.1]), 0.9)
    assert math.isinf(point.threshold) and not point.reached and point.recall == 0.0


def test_no_invalid_image_calls_everything_valid():
    targets, scores = np.ones(3, int), np.array([0.9, 0.5, 0.2])
    assert recall_at_precision(targets, scores, 0.9).threshold == 0.2
    # three out of three bound precision at 3 / (3 + z^2) = 0.526 with 95% confidence
    reached = recall_at_precision_bound(targets, scores, 0.5)
    assert (reached.threshold, reached.reached) == (0.2, True)
    assert reached.precision_bound == pytest.approx(0.5258, abs=1e-4)
    unreached = recall_at_precision_bound(targets, scores, 0.9)
    assert (unreached.threshold, unreached.reached) == (0.2, False)


def test_lower_bounds_have_their_closed_forms_at_full_precision():
    z = 1.6448536269514722  # one-sided 95%
    assert precision_lower_bound(20, 20) == pytest.approx(20 / (20 + z**2))
    assert precision_lower_bound(20, 20, method="clopper_pearson") == pytest.approx(0.05 ** (1 / 20))
    # two-sided 95% Wilson interval for 8/10 from the textbook: (0.490, 0.943)
    assert precision_lower_bound(8, 10, level=0.975) == pytest.approx(0.4902, abs=1e-4)
    np.testing.assert_array_equal(precision_lower_bound(np.array([0, 0]), np.array([0, 5])), [0.0, 0.0])


def test_clopper_pearson_is_more_conservative_than_wilson():
    k, n = np.arange(1, 50), np.full(49, 50)
    assert np.all(precision_lower_bound(k, n, method="clopper_pearson") <= precision_lower_bound(k, n) + 1e-12)


def test_point_rule_is_optimistic_where_the_bound_rule_is_not():
    targets, scores = SMALL_SET
    point = recall_at_precision(targets, scores, 0.9)
    assert (point.recall, point.precision) == (1.0, pytest.approx(42 / 43))
    # Wilson: 42 of 43 bound precision at 0.902, enough for 0.90 ...
    wilson = recall_at_precision_bound(targets, scores, 0.9, method="wilson")
    assert (wilson.threshold, wilson.recall, wilson.reached) == (point.threshold, 1.0, True)
    assert wilson.precision_bound == pytest.approx(0.9023, abs=1e-4)
    # ... but not for 0.92, which only 40 of 40 certify (0.937): recall drops to 40/42
    strict = recall_at_precision_bound(targets, scores, 0.92, method="wilson")
    assert (strict.threshold, strict.recall, strict.precision, strict.reached) == (scores[39], 40 / 42, 1.0, True)
    # the exact bound is lower (42/43: 0.894), so Clopper-Pearson needs the 40 of 40 already at 0.90
    exact = recall_at_precision_bound(targets, scores, 0.9, method="clopper-pearson")
    assert (exact.threshold, exact.recall) == (scores[39], 40 / 42)


@pytest.mark.parametrize(("level", "method"), [(0.0, "wilson"), (1.0, "wilson"), (0.95, "agresti")])
def test_bad_bound_settings_are_refused(level, method):
    with pytest.raises(ValueError, match="bound"):
        recall_at_precision_bound(TARGETS, SCORES, 0.9, level=level, method=method)
