"""The logistic baseline as an estimator: C chosen on validation, probabilities, and its summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from image_classification.scorers.baseline import BaselineWeights, LogisticBaseline


def blobs(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, size=n)
    features = rng.normal(size=(n, 20))
    features[:, 0] += shift * targets
    return features, targets


def test_c_is_chosen_on_validation_and_scores_are_probabilities():
    train_x, train_y = blobs(200, 3.0, seed=0)
    val_x, val_y = blobs(100, 3.0, seed=1)
    baseline = LogisticBaseline((0.001, 0.1, 10.0), target_precision=0.9, seed=42).fit(train_x, train_y, val_x, val_y)
    assert set(baseline.quality_) == {0.001, 0.1, 10.0}
    best = max(baseline.quality_.values())
    assert baseline.quality_[baseline.c_] == best
    # ties go to the stronger regularisation: no C with the same score is smaller than the chosen one
    assert all(c >= baseline.c_ for c, quality in baseline.quality_.items() if quality == best)
    scores = baseline.score_samples(val_x)
    assert scores.shape == (100,) and ((scores >= 0) & (scores <= 1)).all()
    assert scores[val_y == 1].mean() > scores[val_y == 0].mean() + 0.5  # it learned the shifted channel
    summary = baseline.summary("efficientnet_lite0", train_images=200)
    assert summary["C"] == baseline.c_ and summary["train_images"] == 200 and len(summary["c_grid"]) == 3
    assert "efficientnet_lite0" in summary["description"]



def test_saved_weights_score_as_the_fitted_baseline_and_refuse_other_features():
    """What predict, zero_shot and the MLflow model serve is the fitted baseline, read from plain JSON."""
    train_x, train_y = blobs(200, 3.0, seed=0)
    val_x, val_y = blobs(100, 3.0, seed=1)
    baseline = LogisticBaseline((0.1, 10.0), target_precision=0.9, seed=42).fit(train_x, train_y, val_x, val_y)
    payload = json.loads(json.dumps(BaselineWeights.of(baseline, "efficientnet_lite0").to_payload()))
    weights = BaselineWeights.from_payload(payload)
    np.testing.assert_allclose(weights.score(val_x), baseline.score_samples(val_x), rtol=1e-9, atol=1e-12)
    assert weights.c == baseline.c_ and payload["features"] == 20
    with pytest.raises(ValueError, match="fitted on 20 pooled efficientnet_lite0 features, got features of shape"):
        weights.score(val_x[:, :10])
    with pytest.raises(ValueError, match="no fitted baseline weights were given"):
        BaselineWeights.from_payload({})
    with pytest.raises(ValueError, match="inconsistent: 20 means, 19 scales"):
        BaselineWeights.from_payload(payload | {"scale": payload["scale"][:19]})
