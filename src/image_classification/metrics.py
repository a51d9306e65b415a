"""The target function and the operating point: recall at a target precision, and test metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from image_classification.errors import DataError, ParameterError


@dataclass(frozen=True)
class PrecisionRecallPoint:
    """A decision threshold on the score of ``valid`` and what it achieves.

    ``reached`` is False when no threshold reaches the target precision; ``threshold`` then
    follows the fallback rule (the highest-precision threshold) and says so.
    """

    threshold: float
    precision: float
    recall: float
    reached: bool


def check_target_precision(target: float) -> float:
    """A target precision must be in (0, 1]."""
    if not 0.0 < float(target) <= 1.0:
        raise ParameterError(f"target_precision must be in (0, 1], got {target}")
    return float(target)


def recall_at_precision(targets: np.ndarray, scores: np.ndarray, target_precision: float) -> PrecisionRecallPoint:
    """The threshold with the highest recall whose precision is at least ``target_precision``.

    Images with ``score >= threshold`` are called valid. Among thresholds with equal recall the
    highest precision wins, then the highest threshold. If no threshold reaches the target, the
    threshold of highest precision is returned with ``reached=False``.
    """
    check_target_precision(target_precision)
    targets = np.asarray(targets).astype(int)
    if targets.sum() == 0:
        return PrecisionRecallPoint(threshold=float("inf"), precision=0.0, recall=0.0, reached=False)
    precision, recall, thresholds = precision_recall_curve(targets, np.asarray(scores, dtype=np.float64))
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    meets = precision >= target_precision - 1e-12
    if meets.any():
        candidates = np.flatnonzero(meets)
        order = np.lexsort((thresholds[candidates], precision[candidates], recall[candidates]))
        best = candidates[order[-1]]
        return PrecisionRecallPoint(float(thresholds[best]), float(precision[best]), float(recall[best]), True)
    order = np.lexsort((thresholds, recall, precision))
    best = order[-1]
    return PrecisionRecallPoint(float(thresholds[best]), float(precision[best]), float(recall[best]), False)


def oracle_recall(targets: np.ndarray, scores: np.ndarray, target_precision: float) -> float:
    """The best recall any threshold on ``scores`` reaches at ``target_precision`` on these very
    images (0 when none reaches it): what a threshold chosen elsewhere is measured against."""
    point = recall_at_precision(targets, scores, target_precision)
    return float(point.recall) if point.reached else 0.0


def recall_efficiency(recall: float, oracle: float) -> float | None:
    """The share of the recall the scores allowed that a threshold kept: recall / oracle recall, at
    most 1 (recall beyond the oracle's comes at a precision below the target); None when no threshold
    reaches the target on these images, so that there was nothing to keep."""
    if oracle is None or oracle <= 0 or recall is None or not np.isfinite(recall):
        return None
    return float(min(recall / oracle, 1.0))


def validation_score(targets: np.ndarray, scores: np.ndarray, target_precision: float) -> tuple[float, float]:
    """What early stopping maximises: (recall at the target precision, average precision)."""
    point = recall_at_precision(targets, scores, target_precision)
    targets = np.asarray(targets).astype(int)
    has_both = 0 < targets.sum() < len(targets)
    average_precision = float(average_precision_score(targets, scores)) if has_both else 0.0
    return (point.recall if point.reached else 0.0), average_precision


# ---------------------------------------------------------------- operating points with a confidence bound

BOUND_METHODS = ("wilson", "clopper_pearson")


@dataclass(frozen=True)
class BoundedPrecisionRecallPoint(PrecisionRecallPoint):
    """An :class:`PrecisionRecallPoint` chosen on a lower confidence bound of precision.

    ``precision_bound`` is the one-sided lower bound on the precision at ``threshold``.
    """

    precision_bound: float = 0.0


def _check_bound(level: float, method: str) -> str:
    method = method.replace("-", "_")
    if method not in BOUND_METHODS:
        raise ParameterError(f"bound method must be one of {', '.join(BOUND_METHODS)}, got '{method}'")
    if not 0.0 < float(level) < 1.0:
        raise ParameterError(f"bound level must be in (0, 1), got {level}")
    return method


def precision_lower_bound(
    true_positives: np.ndarray | int, predicted_positives: np.ndarray | int, level: float = 0.95,
    method: str = "wilson",
) -> np.ndarray | float:
    """One-sided lower confidence bound on precision, ``true_positives / predicted_positives``.

    The true precision is at least the bound with probability ``level``. ``wilson`` is the Wilson
    score bound, ``clopper_pearson`` the exact (conservative) binomial bound. No predicted
    positives gives 0. Accepts scalars or arrays.
    """
    method = _check_bound(level, method)
    k = np.asarray(true_positives, dtype=np.float64)
    n = np.asarray(predicted_positives, dtype=np.float64)
    safe_n = np.maximum(n, 1.0)
    if method == "wilson":
        z = norm.ppf(level)
        p = k / safe_n
        centre = (p + z**2 / (2 * safe_n)) / (1 + z**2 / safe_n)
        half_width = z / (1 + z**2 / safe_n) * np.sqrt(p * (1 - p) / safe_n + z**2 / (4 * safe_n**2))
        bound = centre - half_width
    else:
        bound = np.where(k > 0, beta.ppf(1 - level, np.maximum(k, 1.0), n - k + 1), 0.0)
    bound = np.where(n > 0, np.clip(bound, 0.0, 1.0), 0.0)
    return float(bound) if bound.ndim == 0 else bound


def threshold_counts(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (highest first), with the true positives and the
    predicted positives that ``score >= threshold`` gives."""
    targets = np.asarray(targets).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1] if len(ranked) else np.empty(0, int)
    true_positives = np.cumsum(targets[order])[last_of_each]
    return ranked[last_of_each], true_positives, last_of_each + 1


def recall_at_precision_bound(
    targets: np.ndarray, scores: np.ndarray, target_precision: float, level: float = 0.95,
    method: str = "wilson",
) -> BoundedPrecisionRecallPoint:
    """The threshold with the highest recall whose precision *lower bound* is at least the target.

    Like :func:`recall_at_precision`, but a threshold qualifies only if the one-sided ``level``
    lower confidence bound on its precision (see :func:`precision_lower_bound`) reaches
    ``target_precision``, which guards against the optimism of a point estimate on a small
    validation set. Ties: highest recall, then highest bound, then highest threshold. If no
    threshold qualifies, the threshold of highest bound (then recall, then threshold) is
    returned with ``reached=False``.
    """
    check_target_precision(target_precision)
    method = _check_bound(level, method)
    targets = np.asarray(targets).astype(int)
    positives = int(targets.sum())
    if positives == 0:
        return BoundedPrecisionRecallPoint(float("inf"), 0.0, 0.0, False, 0.0)
    thresholds, true_positives, predicted = threshold_counts(targets, scores)
    precision, recall = true_positives / predicted, true_positives / positives
    bound = precision_lower_bound(true_positives, predicted, level, method)
    meets = np.flatnonzero(bound >= target_precision - 1e-12)
    if len(meets):
        best = meets[np.lexsort((thresholds[meets], bound[meets], recall[meets]))[-1]]
    else:
        best = np.lexsort((thresholds, recall, bound))[-1]
    return BoundedPrecisionRecallPoint(
        float(thresholds[best]), float(precision[best]), float(recall[best]), bool(len(meets)), float(bound[best])
    )


ORACLE_NOTE = (
    "ORACLE, not an estimate of deployed performance: the threshold is picked on the test split itself "
    "(what the original project reported). Compare test.recall, whose threshold was chosen on validation."
)


# ---------------------------------------------------------------- threshold rules


@dataclass(frozen=True)
class RuleSettings:
    """What a threshold rule may read: the target, the confidence bound's level and method, and what
    the threshold is chosen on (``validation`` or ``out-of-fold``), in the words its texts use."""

    target_precision: float
    bound_level: float = 0.95
    bound_method: str = "wilson"
    chosen_on: str = "validation"

    @property
    def images(self) -> str:
        """The images the threshold is chosen on, in words."""
        return "the validation split" if self.chosen_on == "validation" else f"the {self.chosen_on} scores"


@dataclass(frozen=True)
class ThresholdRule:
    """How an operating point is picked on validation scores.

    ``pick(targets, scores, settings)`` returns the chosen point; ``describe(settings)`` says in
    words what it picks, for the log and ``operating_point.json``; ``fallback(settings, point,
    bound, targets)`` explains what was taken when no threshold qualified.
    """

    name: str
    pick: Callable[[np.ndarray, np.ndarray, RuleSettings], PrecisionRecallPoint]
    describe: Callable[[RuleSettings], str]
    fallback: Callable[[RuleSettings, PrecisionRecallPoint, float, np.ndarray], str]


THRESHOLD_RULES: dict[str, ThresholdRule] = {}


def register_rule(rule: ThresholdRule) -> ThresholdRule:
    """Make a rule selectable as ``evaluate.rule``; a new rule is one call of this."""
    THRESHOLD_RULES[rule.name] = rule
    return rule


register_rule(ThresholdRule(
    name="point",
    pick=lambda targets, scores, s: recall_at_precision(targets, scores, s.target_precision),
    describe=lambda s: f"the highest {s.chosen_on} recall whose {s.chosen_on} precision is at least the target",
    fallback=lambda s, point, bound, targets: (
        f"No threshold reaches precision {s.target_precision:.2f} on {s.images}. Fallback rule: the "
        f"threshold of highest {s.chosen_on} precision ({point.precision:.3f}, recall {point.recall:.3f}). Expect "
        "test precision below the target."),
))


def _lower_bound_fallback(s: RuleSettings, point: PrecisionRecallPoint, bound: float, targets: np.ndarray) -> str:
    valid = int(np.sum(targets))
    explanation = (f"No threshold's {s.bound_level:.0%} {s.bound_method} lower bound on {s.chosen_on} precision "
                   f"reaches {s.target_precision:.2f}. Fallback rule: the threshold of highest lower bound "
                   f"({bound:.3f}; precision {point.precision:.3f}, recall {point.recall:.3f}).")
    best_possible = precision_lower_bound(valid, valid, s.bound_level, s.bound_method)
    if best_possible < s.target_precision:
        explanation += (f" Even a perfect ranking of these {valid} valid {s.chosen_on} images bounds precision at "
                        f"{best_possible:.3f} only: {s.images} {'is' if s.chosen_on == 'validation' else 'are'} too "
                        "small to certify the target.")
    return explanation


register_rule(ThresholdRule(
    name="lower_bound",
    pick=lambda targets, scores, s: recall_at_precision_bound(targets, scores, s.target_precision, s.bound_level,
                                                              s.bound_method),
    describe=lambda s: (f"the highest {s.chosen_on} recall whose one-sided {s.bound_level:.0%} {s.bound_method} "
                        f"lower confidence bound on {s.chosen_on} precision is at least the target"),
    fallback=_lower_bound_fallback,
))


def threshold_rule(name: str) -> ThresholdRule:
    """A registered rule by name; an unknown name lists the rules there are."""
    if name not in THRESHOLD_RULES:
        raise ParameterError(f"evaluate.rule must be one of {', '.join(THRESHOLD_RULES)}, got '{name}'")
    return THRESHOLD_RULES[name]


def select_threshold(targets: np.ndarray, scores: np.ndarray, rule: str, settings: RuleSettings) -> dict:
    """The threshold a rule picks on validation, what it achieves there, and any fallback taken."""
    if not np.sum(targets):
        raise DataError("the validation split has no readable valid image, so no threshold can be chosen; "
                        "add valid images to it (data_prep.split) and rerun data_prep and train")
    chosen = threshold_rule(rule)
    point = chosen.pick(targets, scores, settings)
    called = scores >= point.threshold
    bound = precision_lower_bound(int(targets[called].sum()), int(called.sum()), settings.bound_level,
                                  settings.bound_method)
    oracle = oracle_recall(targets, scores, settings.target_precision)
    return {
        "threshold": point.threshold, "rule": rule, "rule_description": chosen.describe(settings),
        "target_precision": settings.target_precision, "reached": point.reached,
        "fallback": None if point.reached else chosen.fallback(settings, point, bound, targets),
        "validation": {"images": len(targets), "valid_images": int(targets.sum()), "called_valid": int(called.sum()),
                       "precision": point.precision, "recall": point.recall, "precision_lower_bound": bound,
                       "bound_method": settings.bound_method, "bound_level": settings.bound_level,
                       "oracle_recall": oracle, "recall_efficiency": recall_efficiency(point.recall, oracle)},
    }


# ---------------------------------------------------------------- test metrics


def metrics_at_threshold(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """scikit-learn's binary metrics when ``score >= threshold`` is called valid.

    Returns recall, precision, F1, accuracy, the confusion-matrix counts and the threshold-free
    AUROC and average precision. A metric that is undefined on these images (no valid image,
    nothing called valid, one class only) is NaN.
    """
    targets = np.asarray(targets).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = (scores >= threshold).astype(int)
    has_both = 0 < targets.sum() < len(targets)
    (tn, fp), (fn, tp) = confusion_matrix(targets, predicted, labels=[0, 1])
    return {
        "images": int(len(targets)), "valid_images": int(targets.sum()), "predicted_valid": int(predicted.sum()),
        "recall": float(recall_score(targets, predicted, zero_division=np.nan)),
        "precision": float(precision_score(targets, predicted, zero_division=np.nan)),
        "f1": float(f1_score(targets, predicted, zero_division=np.nan)),
        "accuracy": float(accuracy_score(targets, predicted)) if len(targets) else float("nan"),
        "true_negatives": int(tn), "false_positives": int(fp), "false_negatives": int(fn), "true_positives": int(tp),
        "auroc": float(roc_auc_score(targets, scores)) if has_both else float("nan"),
        "average_precision": float(average_precision_score(targets, scores)) if has_both else float("nan"),
    }


def bootstrap_precision_recall(
    targets: np.ndarray, predicted: np.ndarray, samples: int = 1000, seed: int = 42, level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals for recall and precision of fixed binary predictions.

    Images are resampled with replacement ``samples`` times from ``np.random.default_rng(seed)``.
    A resample without valid images (recall) or without images called valid (precision) has no
    value and is left out; ``*_resamples`` say how many counted. The counting is vectorised:
    one scikit-learn call per resample takes ~7 ms, which is 15 s for two classifiers.

    Returns:
        ``recall`` and ``precision`` as ``[low, high]`` (NaN when no resample counted), the
        number of resamples each is based on, ``samples`` and ``level``.
    """
    targets = np.asarray(targets).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    rng = np.random.default_rng(seed)
    counts = np.zeros((samples, 3))  # true positives, valid images, images called valid
    chunk = max(1, 2_000_000 // max(len(targets), 1))  # bounds memory on large test sets
    for start in range(0, samples if len(targets) else 0, chunk):  # no images: nothing to resample
        picks = rng.integers(0, len(targets), size=(min(chunk, samples - start), len(targets)))
        hits_t, hits_p = targets[picks], predicted[picks]
        counts[start : start + len(picks)] = np.stack([(hits_t & hits_p).sum(1), hits_t.sum(1), hits_p.sum(1)], 1)
    tails = [50 * (1 - level), 100 - 50 * (1 - level)]
    result: dict = {"samples": int(samples), "level": float(level)}
    for name, denominator in (("recall", 1), ("precision", 2)):
        usable = counts[:, denominator] > 0
        values = counts[usable, 0] / counts[usable, denominator]
        result[name] = [float(v) for v in np.percentile(values, tails)] if len(values) else [float("nan")] * 2
        result[f"{name}_resamples"] = int(usable.sum())
    return result


def report_at_threshold(targets: np.ndarray, scores: np.ndarray, threshold: float, target_precision: float,
                        bootstrap_samples: int, bootstrap_level: float, seed: int) -> dict:
    """One classifier's test metrics at a threshold chosen elsewhere, their bootstrap intervals, and the
    oracle (the threshold picked on these very images) for comparison, labelled as such."""
    test = metrics_at_threshold(targets, scores, threshold)
    test["target_precision_held"] = bool(test["precision"] >= target_precision)  # NaN: not held
    bootstrap = bootstrap_precision_recall(targets, scores >= threshold, bootstrap_samples, seed, bootstrap_level)
    oracle = recall_at_precision(targets, scores, target_precision)
    test["oracle_recall"] = float(oracle.recall) if oracle.reached else 0.0
    test["recall_efficiency"] = recall_efficiency(test["recall"], test["oracle_recall"])
    return {
        "test": test,
        "test_bootstrap": {**bootstrap, "seed": seed},
        "oracle_picked_on_test": {"note": ORACLE_NOTE, "reached": oracle.reached, "threshold": oracle.threshold,
                                  "recall_at_target_precision": oracle.recall if oracle.reached else None,
                                  "precision": oracle.precision if oracle.reached else None},
    }


def format_figure(value: float | None) -> str:
    """A figure for a log line or a figure title: three decimals, or ``n/a`` where it is undefined."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_threshold(value: float | None) -> str:
    """A threshold as a reader must see it: as many decimals as it takes to tell it from 0 and 1 (two
    significant digits of its distance to the nearer one, at least three decimals, at most ten), with
    trailing zeros dropped, so 0.99999702 stays 0.99999702 (never "1.0000") and 0.5 stays 0.5. A
    threshold outside [0, 1] (a distance, a log-likelihood) keeps six significant digits; ``n/a`` where
    there is none."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    value = float(value)
    if not 0.0 <= value <= 1.0:
        return f"{value:.6g}"
    gap = min(value, 1.0 - value)
    decimals = 3 if gap == 0.0 else min(max(3, 2 - math.floor(math.log10(gap))), 10)
    text = f"{value:.{decimals}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
