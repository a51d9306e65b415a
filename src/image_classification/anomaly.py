"""Anomaly detectors over feature vectors: each is fitted on in-distribution training images and
scores new ones, higher meaning less like anything seen in training.

Built from scikit-learn parts; every detector has the same two methods, ``fit(x, y)`` and
``score(x)``, so they can be compared side by side and swapped by a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import linalg
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from image_classification.errors import DataError, ParameterError


class Detector:
    """fit on in-distribution features (and labels); score: higher = more anomalous."""

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "Detector":  # pragma: no cover - interface
        raise NotImplementedError

    def score(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class KNNDetector(Detector):
    """Distance to the k-th nearest training image after L2 normalisation (Sun et al., 2022)."""

    k: int = 5
    _index: NearestNeighbors | None = field(default=None, repr=False)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "KNNDetector":
        if len(features) < self.k:
            raise DataError(f"kNN detector needs at least k={self.k} training images, got {len(features)}")
        self._index = NearestNeighbors(n_neighbors=self.k).fit(normalize(features))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self._index.kneighbors(normalize(features))
        return distances[:, -1]


@dataclass
class MahalanobisDetector(Detector):
    """Smallest Mahalanobis distance to a class mean, with one covariance shared by the classes
    (Lee et al., 2018). ``relative`` subtracts the distance under one Gaussian fitted to all
    training images, which discounts directions that are merely unusual for every class
    (Ren et al., 2021). Covariances are Ledoit-Wolf shrunk, so 1280-d features work with a few
    hundred images."""

    relative: bool = False
    _means: np.ndarray | None = field(default=None, repr=False)
    _factor: np.ndarray | None = field(default=None, repr=False)
    _background: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @staticmethod
    def _cholesky(samples: np.ndarray, assume_centered: bool) -> np.ndarray:
        # a Cholesky factor of the shrunk covariance instead of its inverse: several times
        # faster than sklearn's eigendecomposition-based precision in 1280 dimensions
        covariance = LedoitWolf(store_precision=False, assume_centered=assume_centered).fit(samples).covariance_
        # shrinkage alone leaves it singular when features do not vary at all (a constant channel,
        # or every image alike, as with random backbone weights): a tiny ridge keeps it invertible
        ridge = max(1e-6 * float(np.trace(covariance)) / len(covariance), 1e-10)
        covariance[np.diag_indices_from(covariance)] += ridge
        return linalg.cholesky(covariance, lower=True)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "MahalanobisDetector":
        classes = np.unique(targets)
        self._means = np.stack([features[targets == c].mean(axis=0) for c in classes])
        self._factor = self._cholesky(features - self._means[np.searchsorted(classes, targets)], True)
        if self.relative:
            self._background = (features.mean(axis=0), self._cholesky(features, False))
        return self

    @staticmethod
    def _squared(features: np.ndarray, mean: np.ndarray, factor: np.ndarray) -> np.ndarray:
        whitened = linalg.solve_triangular(factor, (features - mean).T, lower=True)
        return np.sum(whitened**2, axis=0)

    def score(self, features: np.ndarray) -> np.ndarray:
        distances = np.stack([self._squared(features, mean, self._factor) for mean in self._means], axis=1)
        if self.relative:
            distances = distances - self._squared(features, *self._background)[:, None]
        return distances.min(axis=1)


@dataclass
class GMMDetector(Detector):
    """Negative log-likelihood under a Gaussian mixture fitted to the training images, the
    original project's tool. Diagonal covariances keep it stable in 1280 dimensions."""

    components: int = 4
    covariance_type: str = "full"
    seed: int = 42
    _model: GaussianMixture | None = field(default=None, repr=False)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "GMMDetector":
        covariance = self.covariance_type if features.shape[1] <= 128 else "diag"
        self._model = GaussianMixture(
            n_components=min(self.components, len(features)), covariance_type=covariance,
            reg_covar=1e-4, random_state=self.seed,
        ).fit(features)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return -self._model.score_samples(features)


class MaxSoftmaxDetector(Detector):
    """The baseline (Hendrycks and Gimpel, 2017): an image is odd when the classifier is unsure.
    Its "features" are the classifier's probability of valid, shape (N, 1)."""

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "MaxSoftmaxDetector":
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        probability = features[:, 0]
        return -np.maximum(probability, 1.0 - probability)


def build_detector(name: str, knn_k: int = 5, gmm_components: int = 4, seed: int = 42) -> Detector:
    """A detector by name: knn, mahalanobis, relative_mahalanobis, gmm or msp."""
    detectors = {
        "knn": lambda: KNNDetector(k=knn_k),
        "mahalanobis": lambda: MahalanobisDetector(relative=False),
        "relative_mahalanobis": lambda: MahalanobisDetector(relative=True),
        "gmm": lambda: GMMDetector(components=gmm_components, seed=seed),
        "msp": MaxSoftmaxDetector,
    }
    if name not in detectors:
        raise ValueError(f"unknown detector '{name}'; choose one of {sorted(detectors)}")
    return detectors[name]()


def calibrate_threshold(in_distribution_scores: np.ndarray, target_tpr: float) -> float:
    """The anomaly-score threshold that accepts ``target_tpr`` of in-distribution images
    (an image is flagged when its score is above it)."""
    if not 0.0 < target_tpr <= 1.0:
        raise ParameterError(f"target_tpr must be in (0, 1], got {target_tpr}")
    return float(np.quantile(in_distribution_scores, target_tpr, method="higher"))


def decide(score: np.ndarray, anomaly_score: np.ndarray, threshold: float,
           anomaly_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The project's decision rule, one place for zero_shot and predict.

    Returns, per image: called valid (``score >= threshold``), flagged as anomalous (anomaly score
    above the detector's threshold) and accepted as valid (called valid and not flagged). A NaN
    score (an unreadable image) is none of the three.
    """
    valid = np.asarray(score) >= threshold
    flagged = np.asarray(anomaly_score) > anomaly_threshold
    return valid, flagged, valid & ~flagged


def separation_metrics(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """AUROC, AUPR (unseen images as positives) and the share of unseen images accepted at the
    threshold that accepts ``tpr`` of in-distribution images (FPR at 95% TPR)."""
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores, out_scores]
    threshold = np.quantile(in_scores, tpr, method="higher")
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(np.mean(out_scores <= threshold)),
    }


def detector_state(detector: Detector, name: str, space: str | None, threshold: float) -> dict:
    """A fitted detector as plain arrays plus metadata, for a SafetensorsDataset (never a pickle)."""
    if isinstance(detector, KNNDetector):
        arrays = {"reference": detector._index._fit_X}
        settings = {"type": "knn", "k": detector.k}
    elif isinstance(detector, MahalanobisDetector):
        arrays = {"means": detector._means, "factor": detector._factor}
        if detector.relative:
            arrays |= {"background_mean": detector._background[0], "background_factor": detector._background[1]}
        settings = {"type": "mahalanobis", "relative": detector.relative}
    elif isinstance(detector, GMMDetector):
        model = detector._model
        arrays = {"weights": model.weights_, "means": model.means_, "covariances": model.covariances_,
                  "precisions_cholesky": model.precisions_cholesky_}
        settings = {"type": "gmm", "covariance_type": model.covariance_type}
    elif isinstance(detector, MaxSoftmaxDetector):
        arrays, settings = {}, {"type": "msp"}
    else:  # pragma: no cover - every detector above
        raise TypeError(f"cannot export a {type(detector).__name__}")
    tensors = {key: torch.as_tensor(np.ascontiguousarray(value, dtype=np.float64)) for key, value in arrays.items()}
    return {"tensors": tensors, "metadata": settings | {"name": name, "space": space, "threshold": float(threshold)}}


def detector_from_state(state: dict) -> Detector:
    """Rebuild a detector exported by :func:`detector_state`."""
    settings = state["metadata"]
    arrays = {key: value.numpy() for key, value in state["tensors"].items()}
    kind = settings["type"]
    if kind == "knn":
        detector = KNNDetector(k=int(settings["k"]))
        detector._index = NearestNeighbors(n_neighbors=detector.k).fit(arrays["reference"])
    elif kind == "mahalanobis":
        detector = MahalanobisDetector(relative=bool(settings["relative"]))
        detector._means, detector._factor = arrays["means"], arrays["factor"]
        if detector.relative:
            detector._background = (arrays["background_mean"], arrays["background_factor"])
    elif kind == "gmm":
        detector = GMMDetector(components=len(arrays["weights"]))
        model = GaussianMixture(n_components=len(arrays["weights"]), covariance_type=settings["covariance_type"])
        model.weights_, model.means_ = arrays["weights"], arrays["means"]
        model.covariances_, model.precisions_cholesky_ = arrays["covariances"], arrays["precisions_cholesky"]
        detector._model = model
    elif kind == "msp":
        detector = MaxSoftmaxDetector()
    else:
        raise ValueError(f"unknown detector type '{kind}' in a saved anomaly detector")
    return detector
