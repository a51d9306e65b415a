"""The fused detector: components on their own spaces, measured against validation and combined."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import build_detector, calibrate_threshold, separation_metrics

from .helpers import gaussian_data


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
    from image_classification.datasets import SafetensorsDataset
    from image_classification.detectors import DetectorState

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
