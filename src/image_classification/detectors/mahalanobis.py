"""Gaussian class models: the smallest Mahalanobis distance to a class mean, plain or relative."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import linalg
from sklearn.covariance import LedoitWolf

from image_classification.detectors.registry import Detector, register


@register
@dataclass
class MahalanobisDetector(Detector):
    """Smallest Mahalanobis distance to a class mean, with one covariance shared by the classes
    (Lee et al., 2018). Covariances are Ledoit-Wolf shrunk, so 1280-d features work with a few
    hundred images."""

    name: ClassVar[str] = "mahalanobis"
    relative: ClassVar[bool] = False
    means_: np.ndarray | None = field(default=None, repr=False)
    factor_: np.ndarray | None = field(default=None, repr=False)
    background_mean_: np.ndarray | None = field(default=None, repr=False)
    background_factor_: np.ndarray | None = field(default=None, repr=False)

    @staticmethod
    def _covariance(residuals: np.ndarray) -> np.ndarray:
        # factored by Cholesky instead of inverted: several times faster than sklearn's
        # eigendecomposition-based precision in 1280 dimensions
        covariance = LedoitWolf(store_precision=False, assume_centered=True).fit(residuals).covariance_
        # shrinkage alone leaves it singular when features do not vary at all (a constant channel,
        # or every image alike, as with random backbone weights): a tiny ridge keeps it invertible
        ridge = max(1e-6 * float(np.trace(covariance)) / len(covariance), 1e-10)
        covariance[np.diag_indices_from(covariance)] += ridge
        return covariance

    def fit(self, features: np.ndarray, targets: np.ndarray) -> MahalanobisDetector:
        classes, counts = np.unique(targets, return_counts=True)
        self.means_ = np.stack([features[targets == c].mean(axis=0) for c in classes])
        covariance = self._covariance(features - self.means_[np.searchsorted(classes, targets)])
        self.factor_ = linalg.cholesky(covariance, lower=True)
        if self.relative:
            # the background Gaussian's covariance is the shared within-class one plus the class means'
            # scatter (the law of total covariance), so it is at least as wide as the class one in every
            # direction. Shrinking all training images' covariance on its own instead shrinks it 10-20
            # times less (its between-class directions dominate), leaving it tighter than the class one
            # off the training images' span: far images then scored below ordinary ones (AUROC 0.01).
            self.background_mean_ = counts @ self.means_ / counts.sum()
            offsets = self.means_ - self.background_mean_
            between = (offsets.T * (counts / counts.sum())) @ offsets
            self.background_factor_ = linalg.cholesky(covariance + between, lower=True)
        return self

    @staticmethod
    def _squared(features: np.ndarray, mean: np.ndarray, factor: np.ndarray) -> np.ndarray:
        whitened = linalg.solve_triangular(factor, (features - mean).T, lower=True)
        return np.sum(whitened**2, axis=0)

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        distances = np.stack([self._squared(features, mean, self.factor_) for mean in self.means_], axis=1)
        if self.relative:
            distances = distances - self._squared(features, self.background_mean_, self.background_factor_)[:, None]
        return distances.min(axis=1)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {"means": self.means_, "factor": self.factor_}
        if self.relative:
            arrays |= {"background_mean": self.background_mean_, "background_factor": self.background_factor_}
        return arrays, {"relative": self.relative}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> MahalanobisDetector:
        return cls(means_=arrays["means"], factor_=arrays["factor"], background_mean_=arrays.get("background_mean"),
                   background_factor_=arrays.get("background_factor"))


@register
@dataclass
class RelativeMahalanobisDetector(MahalanobisDetector):
    """Mahalanobis minus the distance under one Gaussian fitted to all training images, which
    discounts directions that are merely unusual for every class (Ren et al., 2021)."""

    name: ClassVar[str] = "relative_mahalanobis"
    relative: ClassVar[bool] = True
