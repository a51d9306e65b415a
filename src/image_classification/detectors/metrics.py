"""How well anomaly scores separate unseen images from in-distribution ones, and what that does to
precision in an open world."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from image_classification.errors import ParameterError


def separation_metrics(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """AUROC, AUPR (unseen images as positives) and the share of unseen images accepted at the
    threshold that accepts ``tpr`` of in-distribution images (FPR at 95% TPR)."""
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores, out_scores]
    threshold = np.quantile(in_scores, tpr, method="higher")
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(np.mean(out_scores <= threshold)),
    }


def open_world_precision(accepted_in: np.ndarray, valid_in: np.ndarray, accepted_unseen_by_kind: dict[str, np.ndarray],
                         unseen_share: float) -> float:
    """Precision of everything accepted as valid when unseen kinds make up ``unseen_share`` of the
    images, each unseen kind equally often (none ever being valid).

    ``accepted_in``/``valid_in`` describe the in-distribution test images; the share of each
    unseen kind's images accepted is their false-positive rate. NaN when nothing is accepted.
    """
    if not 0.0 <= unseen_share < 1.0:
        raise ParameterError(f"zero_shot.unseen_share must be in [0, 1), got {unseen_share}")
    accepted_in, valid_in = np.asarray(accepted_in, dtype=bool), np.asarray(valid_in, dtype=bool)
    images = max(len(accepted_in), 1)
    true_positive = (1.0 - unseen_share) * np.sum(accepted_in & valid_in) / images
    false_in = (1.0 - unseen_share) * np.sum(accepted_in & ~valid_in) / images
    rates = [np.mean(accepted) for accepted in accepted_unseen_by_kind.values() if len(accepted)]
    accepted = true_positive + false_in + (unseen_share * np.mean(rates) if rates else 0.0)
    return float(true_positive / accepted) if accepted > 0 else float("nan")
