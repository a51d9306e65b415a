"""Each detector family (kNN, Mahalanobis, GMM, maximum softmax) on generated data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import build_detector, separation_metrics

from .helpers import gaussian_data


@pytest.mark.parametrize("name", ["knn", "class_knn", "mahalanobis", "gmm"])
def test_far_away_cluster_is_found(name):
    train, targets, test, unseen = gaussian_data(20, shift=12.0)
    detector = build_detector(name).fit(train, targets)
    metrics = separation_metrics(detector.score_samples(test), detector.score_samples(unseen))
    assert metrics["auroc"] > 0.99
    assert metrics["fpr_at_95_tpr"] < 0.02


@pytest.mark.parametrize("name", ["knn", "mahalanobis", "gmm"])
def test_overlapping_cluster_is_indistinguishable(name):
    train, targets, test, _ = gaussian_data(20, shift=0.0)
    rng = np.random.default_rng(5)
    same_distribution = np.zeros((300, 20))
    same_distribution[:, 0] = 8.0
    same_distribution[:, 1] = 4.0 * rng.integers(0, 2, size=300)
    same_distribution += rng.normal(size=(300, 20))
    detector = build_detector(name).fit(train, targets)
    auroc = separation_metrics(detector.score_samples(test), detector.score_samples(same_distribution))["auroc"]
    assert 0.42 < auroc < 0.58


def test_mahalanobis_works_with_more_dimensions_than_images():
    train, targets, test, unseen = gaussian_data(1280, shift=0.5, spread=1000)
    detector = build_detector("mahalanobis").fit(train[:200], targets[:200])
    assert separation_metrics(detector.score_samples(test), detector.score_samples(unseen))["auroc"] > 0.95


@pytest.mark.parametrize("name", ["mahalanobis", "relative_mahalanobis"])
def test_mahalanobis_fits_features_that_never_vary(name):
    """Random backbone weights can give channels that are zero for every image (or identical
    images): the fit must not fail on the singular covariance, and what differs still scores higher."""
    train, targets, test, unseen = gaussian_data(20, shift=12.0)
    for features in (train, test, unseen):
        features[:, 5:] = 0.0  # 15 of 20 channels dead on every image
    detector = build_detector(name).fit(train, targets)
    assert np.isfinite(detector.score_samples(test)).all()
    constant = np.zeros((4, 20))
    assert np.isfinite(build_detector(name).fit(constant, np.array([0, 1, 0, 1])).score_samples(test)).all()
    if name == "mahalanobis":  # relative Mahalanobis discounts this shift by design (see below)
        assert separation_metrics(detector.score_samples(test), detector.score_samples(unseen))["auroc"] > 0.99

def test_relative_mahalanobis_discounts_what_is_unusual_for_every_class():
    """Relative Mahalanobis subtracts the distance under one Gaussian of all training images, so
    a cluster far from everything scores about the same as test images (Ren et al., 2021): it is
    a near-anomaly detector, reported beside the others, not a default."""
    train, targets, test, unseen = gaussian_data(20, shift=12.0)
    plain = build_detector("mahalanobis").fit(train, targets)
    relative = build_detector("relative_mahalanobis").fit(train, targets)
    assert separation_metrics(plain.score_samples(test), plain.score_samples(unseen))["auroc"] > 0.99
    assert separation_metrics(relative.score_samples(test), relative.score_samples(unseen))["auroc"] < 0.9


def test_max_softmax_scores_unsure_images_as_anomalous():
    detector = build_detector("msp").fit(np.zeros((1, 1)), np.zeros(1))
    scores = detector.score_samples(np.array([[0.99], [0.5], [0.02]]))
    assert scores[1] > scores[0] and scores[1] > scores[2]
