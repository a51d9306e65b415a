"""The registry: a new detector is one class, and every registered detector passes the same checks."""

from __future__ import annotations

import numpy as np

from image_classification.detectors import build_detector

from .helpers import gaussian_data


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
