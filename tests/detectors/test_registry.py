"""The registry: a new detector is one class, and every registered detector passes the same checks."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.datasets import SafetensorsDataset
from image_classification.detectors import DETECTORS, DetectorSettings, DetectorState, build_detector

from .helpers import gaussian_data


def registered_inputs(name: str, seed: int = 0):
    """What detector ``name`` reads, for a small generated set: training features and targets,
    validation and test features of the same distribution, and one obvious outlier as the last test row.

    Feature spaces are two classes at (8, 0, 0, 0) and (0, 8, 0, 0); the outlier lies far out along
    the line between them, away from both classes' directions (which the kNN detectors compare) and in
    the direction that separates the classes (so relative Mahalanobis, which discounts what is unusual
    for every class, sees it too). A composite detector reads two such spaces side by side; a
    space-free one reads the classifier's probability of valid, sure for ordinary images and 0.5 for
    the outlier.
    """
    rng = np.random.default_rng(seed)
    centres = np.array([[8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0]])
    outlier = np.array([[40.0, -32.0, 0.0, 0.0]])
    split = [rng.integers(0, 2, size=size) for size in (40, 30, 30)]  # train, validation, test classes

    def space():
        return [centres[labels] + rng.normal(size=(len(labels), 4)) for labels in split] + [outlier]

    cls = DETECTORS[name]
    if cls.space_free:
        sure = [np.where(labels == 1, 0.97, 0.03)[:, None] + rng.uniform(-0.02, 0.02, (len(labels), 1))
                for labels in split]
        train, validation, test, outlier_row = sure + [np.array([[0.5]])]
    elif cls.composite:
        first, second = space(), space()
        train, validation, test, outlier_row = (np.hstack(pair) for pair in zip(first, second))
    else:
        train, validation, test, outlier_row = space()
    return train, split[0], validation, np.vstack([test, outlier_row])


def registered_settings(name: str) -> DetectorSettings:
    """The settings each registered detector is built with: a composite one fuses two kNN spaces of width 4."""
    if DETECTORS[name].composite:
        return DetectorSettings(fused=(("knn", "embedding"), ("knn", "pooled")), fused_widths=(4, 4))
    return DetectorSettings()


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_registered_detector_fits_scores_round_trips_and_ranks_an_obvious_outlier_highest(tmp_path, name):
    """The same checks for every detector in the registry, as zero_shot and predict use it: fit on
    training images, standardise on validation ones, score; saved and restored it scores identically;
    an obvious outlier scores above every ordinary test image."""
    train, targets, validation, test = registered_inputs(name)
    detector = build_detector(name, registered_settings(name)).fit(train, targets).standardise(validation)
    assert detector.name == name
    scores = detector.score_samples(test)
    assert scores.shape == (len(test),) and np.isfinite(scores).all()
    assert scores[-1] > scores[:-1].max()

    dataset = SafetensorsDataset(filepath=str(tmp_path / "detector.safetensors"))
    space = None if detector.space_free else "embedding+pooled" if detector.composite else "pooled"
    dataset.save(DetectorState.of(detector, name, space, threshold=1.5).to_payload())
    restored = DetectorState.from_payload(dataset.load())
    assert (restored.detector, restored.space, restored.threshold) == (name, space, 1.5)
    restored_detector = restored.restore()
    assert type(restored_detector) is type(detector)
    np.testing.assert_array_equal(restored_detector.score_samples(test), scores)


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
