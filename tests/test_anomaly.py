"""Anomaly detectors on generated data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.anomaly import build_detector, calibrate_threshold, separation_metrics

DETECTORS = ["knn", "mahalanobis", "relative_mahalanobis", "gmm"]


def gaussian_data(dimensions: int, shift: float, seed: int = 0, spread: int = 1):
    """Two in-distribution classes away from the origin (so directions differ, as for real
    features), and 'unseen' points moved ``shift`` along ``spread`` other axes."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, dimensions))
    centres[:, 0] = 8.0
    centres[1, 1] = 4.0
    targets = rng.integers(0, 2, size=600)
    train = centres[targets] + rng.normal(size=(600, dimensions))
    test_targets = rng.integers(0, 2, size=300)
    test = centres[test_targets] + rng.normal(size=(300, dimensions))
    unseen_centre = centres[0].copy()
    unseen_centre[2 : 2 + spread] += shift
    unseen = unseen_centre + rng.normal(size=(300, dimensions))
    return train, targets, test, unseen


@pytest.mark.parametrize("name", ["knn", "mahalanobis", "gmm"])
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


def test_calibration_hits_the_target_rate_on_fresh_data():
    rng = np.random.default_rng(1)
    threshold = calibrate_threshold(rng.normal(size=2000), 0.95)
    accepted = np.mean(rng.normal(size=20000) <= threshold)
    assert abs(accepted - 0.95) < 0.01  # sampling error of a 2000-image calibration set


def test_bad_names_and_rates_are_refused():
    with pytest.raises(ValueError, match="unknown detector 'isolation'"):
        build_detector("isolation")
    with pytest.raises(ValueError, match="target_tpr"):
        calibrate_threshold(np.ones(3), 1.5)


@pytest.mark.parametrize("name", ["knn", "mahalanobis", "relative_mahalanobis", "gmm", "msp"])
def test_exported_detector_scores_the_same_after_a_safetensors_round_trip(tmp_path, name):
    from image_classification.anomaly import DetectorState
    from image_classification.datasets import SafetensorsDataset

    train, targets, test, _ = gaussian_data(20, shift=12.0)
    features = np.clip(train[:, :1], 0, 1) if name == "msp" else train
    queries = np.clip(test[:, :1], 0, 1) if name == "msp" else test
    detector = build_detector(name).fit(features, targets)
    dataset = SafetensorsDataset(filepath=str(tmp_path / "detector.safetensors"))
    dataset.save(DetectorState.of(detector, name, "pooled", threshold=1.5).to_payload())
    loaded = dataset.load()
    assert loaded["metadata"]["threshold"] == 1.5
    np.testing.assert_allclose(DetectorState.from_payload(loaded).restore().score_samples(queries), detector.score_samples(queries), rtol=1e-10)


def test_a_registered_detector_plugs_into_zero_shot_and_predict():
    """A new detector is one class: zero_shot's config accepts its name, and it saves and restores."""
    from dataclasses import dataclass

    from image_classification.anomaly import DETECTORS, Detector, DetectorState, register
    from image_classification.pipelines.zero_shot.nodes import ZeroShotConfig

    @register
    @dataclass
    class NormDetector(Detector):
        name = "norm"
        mean_: np.ndarray | None = None

        def fit(self, features, targets):
            self.mean_ = features.mean(axis=0)
            return self

        def score_samples(self, features):
            return np.linalg.norm(features - self.mean_, axis=1)

        def state(self):
            return {"mean": self.mean_}, {}

        @classmethod
        def restore(cls, arrays, settings):
            return cls(mean_=arrays["mean"])

    try:
        config = ZeroShotConfig(detectors=["norm", "msp"], flag_detector="norm_pooled")
        assert config.detector_names == ["norm_embedding", "norm_pooled", "msp"]
        train, targets, test, _ = gaussian_data(5, shift=0.0)
        detector = build_detector("norm").fit(train, targets)
        restored = DetectorState.from_payload(DetectorState.of(detector, "norm_pooled", "pooled", 1.0).to_payload())
        np.testing.assert_allclose(restored.restore().score_samples(test), detector.score_samples(test))
    finally:
        DETECTORS.pop("norm")


def test_detector_files_written_before_each_detector_had_its_own_name_still_load():
    import torch

    from image_classification.anomaly import DetectorState

    train, targets, test, _ = gaussian_data(6, shift=0.0)
    detector = build_detector("relative_mahalanobis").fit(train, targets)
    old = {"tensors": {"means": torch.as_tensor(detector.means_), "factor": torch.as_tensor(detector.factor_),
                       "background_mean": torch.as_tensor(detector.background_mean_),
                       "background_factor": torch.as_tensor(detector.background_factor_)},
           "metadata": {"type": "mahalanobis", "relative": True, "name": "relative_mahalanobis_pooled",
                        "space": "pooled", "threshold": 2.0, "target_tpr": 0.95}}
    state = DetectorState.from_payload(old)
    assert state.detector == "relative_mahalanobis" and state.target_tpr == 0.95
    np.testing.assert_allclose(state.restore().score_samples(test), detector.score_samples(test), rtol=1e-10)
