"""A Gaussian mixture over the training images: negative log-likelihood as the anomaly score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from sklearn.mixture import GaussianMixture

from image_classification.detectors.registry import Detector, DetectorSettings, register


@register
@dataclass
class GMMDetector(Detector):
    """Negative log-likelihood under a Gaussian mixture fitted to the training images, the
    original project's tool. Diagonal covariances keep it stable in 1280 dimensions."""

    name: ClassVar[str] = "gmm"
    components: int = 4
    covariance_type: str = "full"
    seed: int = 42
    model_: GaussianMixture | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: DetectorSettings) -> GMMDetector:
        return cls(components=settings.gmm_components, seed=settings.seed)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> GMMDetector:
        covariance = self.covariance_type if features.shape[1] <= 128 else "diag"
        self.model_ = GaussianMixture(
            n_components=min(self.components, len(features)), covariance_type=covariance,
            reg_covar=1e-4, random_state=self.seed,
        ).fit(features)
        return self

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        return -self.model_.score_samples(features)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        model = self.model_
        arrays = {"weights": model.weights_, "means": model.means_, "covariances": model.covariances_,
                  "precisions_cholesky": model.precisions_cholesky_}
        return arrays, {"covariance_type": model.covariance_type}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> GMMDetector:
        model = GaussianMixture(n_components=len(arrays["weights"]), covariance_type=settings["covariance_type"])
        model.weights_, model.means_ = arrays["weights"], arrays["means"]
        model.covariances_, model.precisions_cholesky_ = arrays["covariances"], arrays["precisions_cholesky"]
        return cls(components=len(arrays["weights"]), covariance_type=settings["covariance_type"], model_=model)
