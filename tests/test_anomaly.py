"""Anomaly detectors on generated data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import build_detector, calibrate_threshold, open_world_precision, separation_metrics

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


@pytest.mark.parametrize("name", ["knn", "class_knn", "mahalanobis", "relative_mahalanobis", "gmm", "msp"])
def test_exported_detector_scores_the_same_after_a_safetensors_round_trip(tmp_path, name):
    from image_classification.detectors import DetectorState
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

    from image_classification.detectors import DETECTORS, Detector, DetectorState, register
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

    from image_classification.detectors import DetectorState

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


def test_open_world_precision_counts_each_unseen_kind_at_its_share():
    # 10 test images: 4 valid accepted, 1 valid rejected, 1 invalid accepted, 4 invalid rejected
    accepted = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    valid = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    assert open_world_precision(accepted, valid, {}, 0.0) == pytest.approx(0.8)
    # two unseen kinds, 50% and 0% accepted: each counts equally, whatever its image count
    unseen = {"frog": np.array([1, 0] * 50, dtype=bool), "digit": np.zeros(3, dtype=bool)}
    # per unit of images: 0.9*0.4 true, 0.9*0.1 false in-distribution, 0.1*0.25 unseen
    assert open_world_precision(accepted, valid, unseen, 0.1) == pytest.approx(0.36 / (0.36 + 0.09 + 0.025))
    assert np.isnan(open_world_precision(np.zeros(3, bool), np.ones(3, bool), {}, 0.1))
    with pytest.raises(ValueError, match="unseen_share"):
        open_world_precision(accepted, valid, unseen, 1.0)


def two_space_data(seed: int = 0):
    """Two feature spaces of the same images (a 5-d and a 30-d one, of very different scales); one
    unseen kind is new in the first space only, another in the second only."""
    train, targets, test, unseen = gaussian_data(5, shift=12.0, seed=seed)
    wide_train, _, wide_test, wide_unseen = gaussian_data(30, shift=12.0, seed=seed + 1)
    wide_train, wide_test, wide_unseen = 1000 * wide_train, 1000 * wide_test, 1000 * wide_unseen
    validation = gaussian_data(5, shift=0.0, seed=seed + 2)[2], 1000 * gaussian_data(30, shift=0.0, seed=seed + 3)[2]
    first_only = np.hstack([unseen, wide_test])  # new in the first space, ordinary in the second
    second_only = np.hstack([test, wide_unseen])
    return (np.hstack([train, wide_train]), targets, np.hstack(validation), np.hstack([test, wide_test]),
            first_only, second_only)


def fused(components=(("knn", "embedding"), ("knn", "pooled")), widths=(5, 30), fusion="fisher"):
    from image_classification.detectors import DetectorSettings

    return build_detector("fused", DetectorSettings(fused=components, fused_widths=widths, fusion=fusion))


@pytest.mark.parametrize("fusion", ["fisher", "mean"])
def test_fused_detector_finds_kinds_that_only_one_of_its_spaces_sees(fusion):
    train, targets, validation, test, first_only, second_only = two_space_data()
    detector = fused(fusion=fusion).fit(train, targets).standardise(validation)
    for unseen in (first_only, second_only):
        assert separation_metrics(detector.score_samples(test), detector.score_samples(unseen))["auroc"] > 0.95
    # each component alone misses the kind its space does not see
    alone = build_detector("knn").fit(train[:, :5], targets)
    assert separation_metrics(alone.score_samples(test[:, :5]), alone.score_samples(second_only[:, :5]))["auroc"] < 0.6
    # measured against validation: ordinary images score alike whatever the components' scales
    scores = detector.score_samples(validation)
    if fusion == "mean":
        assert abs(float(np.mean(scores))) < 1e-9
    else:  # two empirical p-values, each uniform over validation: -log of each averages about 1
        assert 1.6 < float(np.mean(scores)) < 2.2


class FirstColumn:
    """A test detector whose anomaly score is its input's first column, so that a fused detector's
    components have exactly the scores a test gives them."""

    name = "first_column"
    space_free = composite = False

    @classmethod
    def create(cls, settings):
        return cls()

    def fit(self, features, targets):
        return self

    def score_samples(self, features):
        return features[:, 0]

    def state(self):
        return {}, {}

    @classmethod
    def restore(cls, arrays, settings):
        return cls()


def test_fisher_fusion_flags_an_image_one_component_finds_beyond_every_validation_image(monkeypatch):
    """With the mean of standardised scores, a component whose validation scores have a heavy tail
    (here 5% of validation images, e.g. a class it finds odd, score 40 sd out) widens its own sd, so
    an image far beyond every validation image in the other component is averaged back under the
    threshold; Fisher's method counts validation images instead of sd and flags it."""
    from image_classification import detectors

    monkeypatch.setitem(detectors.DETECTORS, "first_column", FirstColumn)
    rng = np.random.default_rng(0)
    heavy_tailed = np.r_[rng.normal(size=190), np.full(10, 40.0)]
    validation = np.c_[heavy_tailed, rng.normal(size=200)]
    query = np.array([[0.0, validation[:, 1].max() + 0.5]])  # ordinary in one, beyond all in the other
    flagged = {}
    for fusion in ("fisher", "mean"):
        detector = fused(components=(("first_column", "a"), ("first_column", "b")), widths=(1, 1),
                         fusion=fusion).fit(validation, np.zeros(200)).standardise(validation)
        threshold = calibrate_threshold(detector.score_samples(validation), 0.98)
        flagged[fusion] = bool(detector.score_samples(query)[0] > threshold)
    assert flagged == {"fisher": True, "mean": False}


@pytest.mark.parametrize("fusion", ["fisher", "mean"])
def test_fused_detector_survives_a_safetensors_round_trip_and_refuses_misuse(tmp_path, fusion):
    from image_classification.detectors import DetectorState
    from image_classification.datasets import SafetensorsDataset

    train, targets, validation, test, first_only, _ = two_space_data()
    detector = fused(fusion=fusion).fit(train, targets).standardise(validation)
    dataset = SafetensorsDataset(filepath=str(tmp_path / "detector.safetensors"))
    dataset.save(DetectorState.of(detector, "fused", "embedding+pooled", threshold=0.5, target_tpr=0.98,
                                  calibrated_on="accepted_valid").to_payload())
    restored = DetectorState.from_payload(dataset.load())
    assert restored.space == "embedding+pooled"
    assert restored.describe()["calibrated_on"] == "accepted_valid" and restored.target_tpr == 0.98
    queries = np.vstack([test, first_only])
    np.testing.assert_allclose(restored.restore().score_samples(queries), detector.score_samples(queries), rtol=1e-10)
    if fusion == "mean":  # a detector saved before fusion was a setting has neither key: it was the mean
        payload = dataset.load()
        payload["metadata"].pop("fusion")
        payload["tensors"].pop("reference", None)
        old = DetectorState.from_payload(payload).restore()
        np.testing.assert_allclose(old.score_samples(queries), detector.score_samples(queries), rtol=1e-10)
    with pytest.raises(ValueError, match="zero_shot.fusion"):
        fused(fusion="max")
    with pytest.raises(ValueError, match="standardised on validation"):
        fused().fit(train, targets).score_samples(test)
    with pytest.raises(ValueError, match="zero_shot.fused"):
        fused(components=(), widths=())
    with pytest.raises(ValueError, match="width of each component"):
        fused(widths=(5,))


def test_fused_components_must_be_detectors_that_run():
    from image_classification.parameters.zero_shot import ZeroShotConfig

    config = ZeroShotConfig(fused=["knn_embedding", "msp"], flag_detector="fused")
    assert ("fused", "fused", "embedding+score") in config.detector_runs
    with pytest.raises(ValueError, match=r"zero_shot.fused \['knn_hidden'\]"):
        ZeroShotConfig(fused=["knn_hidden"])
