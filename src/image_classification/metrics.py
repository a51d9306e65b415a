"""The target function and the operating point: recall at a target precision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve


@dataclass(frozen=True)
class OperatingPoint:
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
        raise ValueError(f"target_precision must be in (0, 1], got {target}")
    return float(target)


def recall_at_precision(targets: np.ndarray, scores: np.ndarray, target_precision: float) -> OperatingPoint:
    """The threshold with the highest recall whose precision is at least ``target_precision``.

    Images with ``score >= threshold`` are called valid. Among thresholds with equal recall the
    highest precision wins, then the highest threshold. If no threshold reaches the target, the
    threshold of highest precision is returned with ``reached=False``.
    """
    check_target_precision(target_precision)
    targets = np.asarray(targets).astype(int)
    if targets.sum() == 0:
        return OperatingPoint(threshold=float("inf"), precision=0.0, recall=0.0, reached=False)
    precision, recall, thresholds = precision_recall_curve(targets, np.asarray(scores, dtype=np.float64))
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    meets = precision >= target_precision - 1e-12
    if meets.any():
        candidates = np.flatnonzero(meets)
        order = np.lexsort((thresholds[candidates], precision[candidates], recall[candidates]))
        best = candidates[order[-1]]
        return OperatingPoint(float(thresholds[best]), float(precision[best]), float(recall[best]), True)
    order = np.lexsort((thresholds, recall, precision))
    best = order[-1]
    return OperatingPoint(float(thresholds[best]), float(precision[best]), float(recall[best]), False)


def validation_score(targets: np.ndarray, scores: np.ndarray, target_precision: float) -> tuple[float, float]:
    """What early stopping maximises: (recall at the target precision, average precision)."""
    point = recall_at_precision(targets, scores, target_precision)
    targets = np.asarray(targets).astype(int)
    has_both = 0 < targets.sum() < len(targets)
    average_precision = float(average_precision_score(targets, scores)) if has_both else 0.0
    return (point.recall if point.reached else 0.0), average_precision
