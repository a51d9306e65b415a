"""Anomaly detectors over feature vectors: each is fitted on in-distribution training images and
scores new ones, higher meaning less like anything seen in training.

Every detector has the shape of a scikit-learn estimator: ``fit(x, y) -> self``,
``score_samples(x)``, its fitted state in attributes ending in ``_``. Each one also owns its name
(the key ``zero_shot.detectors`` uses) and how its state is saved as plain arrays and restored
(:class:`DetectorState`, never a pickle). A new detector is one class with ``@register``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from scipy import linalg
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from image_classification.errors import DataError, ParameterError

DETECTORS: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Make a detector class selectable by its ``name`` in ``zero_shot.detectors``."""
    DETECTORS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class DetectorSettings:
    """The parameters any detector may read when it is built (``zero_shot``'s knobs and the seed)."""

    knn_k: int = 5
    gmm_components: int = 4
    seed: int = 42


class Detector:
    """fit on in-distribution features (and labels); score_samples: higher = more anomalous.

    Subclasses set ``name``, implement ``fit`` and ``score_samples``, and say how they are built
    (``create``), saved (``state``: arrays and JSON settings) and restored (``restore``).
    ``space_free`` detectors read the classifier's score, not a feature space.
    """

    name: ClassVar[str]
    space_free: ClassVar[bool] = False

    @classmethod
    def create(cls, settings: DetectorSettings) -> Detector:
        return cls()

    def fit(self, features: np.ndarray, targets: np.ndarray) -> Detector:  # pragma: no cover - interface
        raise NotImplementedError

    def score_samples(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {}, {}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> Detector:
        return cls()


@register
@dataclass
class KNNDetector(Detector):
    """Distance to the k-th nearest training image after L2 normalisation (Sun et al., 2022)."""

    name: ClassVar[str] = "knn"
    k: int = 5
    reference_: np.ndarray | None = field(default=None, repr=False)
    index_: NearestNeighbors | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: DetectorSettings) -> KNNDetector:
        return cls(k=settings.knn_k)

    def _index(self, reference: np.ndarray) -> KNNDetector:
        self.reference_ = reference
        self.index_ = NearestNeighbors(n_neighbors=self.k).fit(reference)
        return self

    def fit(self, features: np.ndarray, targets: np.ndarray) -> KNNDetector:
        if len(features) < self.k:
            raise DataError(f"kNN detector needs at least k={self.k} training images, got {len(features)}")
        return self._index(normalize(features))

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self.index_.kneighbors(normalize(features))
        return distances[:, -1]

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"reference": self.reference_}, {"k": self.k}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> KNNDetector:
        return cls(k=int(settings["k"]))._index(arrays["reference"])


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
    def _cholesky(samples: np.ndarray, assume_centered: bool) -> np.ndarray:
        # a Cholesky factor of the shrunk covariance instead of its inverse: several times
        # faster than sklearn's eigendecomposition-based precision in 1280 dimensions
        covariance = LedoitWolf(store_precision=False, assume_centered=assume_centered).fit(samples).covariance_
        # shrinkage alone leaves it singular when features do not vary at all (a constant channel,
        # or every image alike, as with random backbone weights): a tiny ridge keeps it invertible
        ridge = max(1e-6 * float(np.trace(covariance)) / len(covariance), 1e-10)
        covariance[np.diag_indices_from(covariance)] += ridge
        return linalg.cholesky(covariance, lower=True)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> MahalanobisDetector:
        classes = np.unique(targets)
        self.means_ = np.stack([features[targets == c].mean(axis=0) for c in classes])
        self.factor_ = self._cholesky(features - self.means_[np.searchsorted(classes, targets)], True)
        if self.relative:
            self.background_mean_, self.background_factor_ = features.mean(axis=0), self._cholesky(features, False)
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


def build_detector(name: str, settings: DetectorSettings | None = None) -> Detector:
    """An unfitted detector by its registered name."""
    if name not in DETECTORS:
        raise ParameterError(f"unknown detector '{name}'; choose one of {sorted(DETECTORS)}")
    return DETECTORS[name].create(settings or DetectorSettings())


@dataclass(frozen=True)
class DetectorState:
    """A fitted detector saved as plain arrays and JSON settings (``anomaly_detector.safetensors``),
    with the feature space it reads and the threshold above which an image is flagged.

    Attributes:
        detector: the registered detector name (``knn``, ``mahalanobis``, ...).
        name: the run's column name, ``<detector>_<space>`` or ``msp``.
        space: ``embedding``, ``pooled``, or None (the classifier's score).
    """

    detector: str
    name: str
    space: str | None
    threshold: float
    arrays: dict[str, np.ndarray]
    settings: dict
    target_tpr: float | None = None

    @classmethod
    def of(cls, detector: Detector, name: str, space: str | None, threshold: float,
           target_tpr: float | None = None) -> DetectorState:
        arrays, settings = detector.state()
        return cls(detector.name, name, space, float(threshold), arrays, settings, target_tpr)

    def to_payload(self) -> dict:
        tensors = {key: torch.as_tensor(np.ascontiguousarray(value, dtype=np.float64))
                   for key, value in self.arrays.items()}
        metadata = {**self.settings, "type": self.detector, "name": self.name, "space": self.space,
                    "threshold": self.threshold}
        return {"tensors": tensors, "metadata": metadata | ({} if self.target_tpr is None else
                                                            {"target_tpr": self.target_tpr})}

    @classmethod
    def from_payload(cls, payload: dict) -> DetectorState:
        metadata = dict(payload["metadata"])
        detector = metadata.pop("type")
        if detector == "mahalanobis" and metadata.get("relative"):  # written before each had its own name
            detector = "relative_mahalanobis"
        if detector not in DETECTORS:
            raise DataError(f"unknown detector type '{detector}' in a saved anomaly detector; rerun the zero_shot "
                            "pipeline")
        name, space, threshold = metadata.pop("name"), metadata.pop("space"), float(metadata.pop("threshold"))
        arrays = {key: value.numpy() for key, value in payload["tensors"].items()}
        return cls(detector, name, space, threshold, arrays, metadata, metadata.pop("target_tpr", None))

    def restore(self) -> Detector:
        """The fitted detector, ready to score."""
        return DETECTORS[self.detector].restore(self.arrays, self.settings)

    def describe(self) -> dict:
        """Its name, space, threshold and calibration target, for reports."""
        return {"name": self.name, "space": self.space, "threshold": self.threshold, "target_tpr": self.target_tpr}


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
