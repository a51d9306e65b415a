"""A detector's threshold and the decision made with it: the detector scores, this module decides."""

from __future__ import annotations

import numpy as np

from image_classification.errors import ParameterError


def calibrate_threshold(in_distribution_scores: np.ndarray, target_tpr: float) -> float:
    """The anomaly-score threshold that accepts ``target_tpr`` of in-distribution images
    (an image is flagged when its score is above it)."""
    if not 0.0 < target_tpr <= 1.0:
        raise ParameterError(f"target_tpr must be in (0, 1], got {target_tpr}")
    return float(np.quantile(in_distribution_scores, target_tpr, method="higher"))


def decide(score: np.ndarray, anomaly_score: np.ndarray, threshold: float,
           anomaly_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The project's decision rule, one place for zero_shot and predict.

    Returns, per image: called valid (``score >= threshold``), flagged as anomalous (anomaly score
    above the detector's threshold) and accepted as valid (called valid and not flagged). A NaN
    score (an unreadable image) is none of the three.
    """
    valid = np.asarray(score) >= threshold
    flagged = np.asarray(anomaly_score) > anomaly_threshold
    return valid, flagged, valid & ~flagged
