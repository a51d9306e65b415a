"""The maximum-softmax-probability baseline: reads the classifier's score, not a feature space."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from image_classification.detectors.registry import Detector, register


@register
class MaxSoftmaxDetector(Detector):
    """The baseline (Hendrycks and Gimpel, 2017): an image is odd when the classifier is unsure.
    Its "features" are the classifier's probability of valid, shape (N, 1)."""

    name: ClassVar[str] = "msp"
    space_free: ClassVar[bool] = True

    def fit(self, features: np.ndarray, targets: np.ndarray) -> MaxSoftmaxDetector:
        return self

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        probability = features[:, 0]
        return -np.maximum(probability, 1.0 - probability)
