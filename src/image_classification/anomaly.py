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
    fused: tuple[tuple[str, str | None], ...] = ()
    """The fused detector's components: (detector, feature space or None) pairs."""
    fused_widths: tuple[int, ...] = ()
    """How many columns each component's space has, in the fused detector's side-by-side features."""
    fusion: str = "fisher"
    """How the fused detector combines its components (:data:`FUSIONS`)."""


class Detector:
    """fit on in-distribution features (and labels); score_samples: higher = more anomalous.

    Subclasses set ``name``, implement ``fit`` and ``score_samples``, and say how they are built
    (``create``), saved (``state``: arrays and JSON settings) and restored (``restore``).
    ``space_free`` detectors read the classifier's score, not a feature space; ``composite`` ones
    read several spaces side by side (see :class:`FusedDetector`).
    """

    name: ClassVar[str]
    space_free: ClassVar[bool] = False
    composite: ClassVar[bool] = False

    @classmethod
    def create(cls, settings: DetectorSettings) -> Detector:
        return cls()

    def fit(self, features: np.ndarray, targets: np.ndarray) -> Detector:  # pragma: no cover - interface
        raise NotImplementedError

    def score_samples(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def standardise(self, features: np.ndarray) -> Detector:
        """Called with the validation images' features after ``fit``: a detector that combines
        scores of different scales measures them here. Most need nothing."""
        return self

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
class ClassKNNDetector(KNNDetector):
    """Distance to the k-th nearest training image of the nearest class, after L2 normalisation:
    an image is ordinary if it is close to many images of any one class. With finer classes than
    valid/invalid (``zero_shot.class_conditional``) a tight class is not drowned by a loose one."""

    name: ClassVar[str] = "class_knn"
    classes_: np.ndarray | None = field(default=None, repr=False)
    indexes_: list[NearestNeighbors] | None = field(default=None, repr=False)

    def _index(self, reference: np.ndarray, classes: np.ndarray | None = None) -> ClassKNNDetector:
        self.reference_ = reference
        self.classes_ = np.asarray(classes if classes is not None else self.classes_)
        self.indexes_ = [NearestNeighbors(n_neighbors=min(self.k, int(np.sum(self.classes_ == c)))).fit(
            reference[self.classes_ == c]) for c in np.unique(self.classes_)]
        return self

    def fit(self, features: np.ndarray, targets: np.ndarray) -> ClassKNNDetector:
        if len(features) < self.k:
            raise DataError(f"class_knn detector needs at least k={self.k} training images, got {len(features)}")
        return self._index(normalize(features), np.asarray(targets))

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        query = normalize(features)
        return np.min([index.kneighbors(query)[0][:, -1] for index in self.indexes_], axis=0)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"reference": self.reference_, "classes": self.classes_}, {"k": self.k}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> ClassKNNDetector:
        return cls(k=int(settings["k"]))._index(arrays["reference"], arrays["classes"])


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


FUSIONS = ("fisher", "mean")
"""How a fused detector combines its components' scores, each measured against the validation images:

- ``fisher``: each score becomes the share of validation images scoring at least as high (an
  empirical p-value, (1 + count) / (n + 1), shrinking further beyond the highest validation score),
  and the fused score is the sum of their negative logarithms (Fisher's method). An image that one
  component places beyond nearly every validation image stays far out whatever the others say.
- ``mean``: each score standardised (mean 0, sd 1 on validation) and averaged. A component whose
  validation scores spread widely counts for less, so one component's clear evidence can be
  averaged away.
"""


@register
@dataclass
class FusedDetector(Detector):
    """Several detectors, each on its own feature space, their scores measured against the
    validation images and combined (``fusion``, :data:`FUSIONS`): the backbone's pooled features see
    far-away kinds, the trained embedding near ones, and the fused score keeps both.

    Its features are the components' spaces side by side (``space`` ``embedding+pooled``), in the
    order of ``components``.
    """

    name: ClassVar[str] = "fused"
    composite: ClassVar[bool] = True
    components: tuple[tuple[str, str | None], ...] = ()
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    fusion: str = "fisher"
    widths_: list[int] | None = None
    detectors_: list[Detector] | None = field(default=None, repr=False)
    means_: np.ndarray | None = None
    scales_: np.ndarray | None = None
    reference_: np.ndarray | None = field(default=None, repr=False)
    """fisher: every component's validation scores, sorted, one column per component."""

    @classmethod
    def create(cls, settings: DetectorSettings) -> FusedDetector:
        if settings.fusion not in FUSIONS:
            raise ParameterError(f"zero_shot.fusion must be one of {list(FUSIONS)}, got '{settings.fusion}'")
        if not settings.fused:
            raise ParameterError("the fused detector needs components: set zero_shot.fused, e.g. "
                                 "[knn_embedding, knn_pooled]")
        if len(settings.fused_widths) != len(settings.fused):
            raise ParameterError(f"the fused detector needs the width of each component's space, got "
                                 f"{list(settings.fused_widths)} for {len(settings.fused)} components")
        return cls(components=tuple(settings.fused), settings=settings, fusion=settings.fusion,
                   widths_=list(settings.fused_widths))

    def _parts(self, features: np.ndarray) -> list[np.ndarray]:
        return np.split(features, np.cumsum(self.widths_)[:-1], axis=1)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> FusedDetector:
        """Fit every component on its own space's columns of the training features."""
        self.detectors_ = [build_detector(detector, self.settings).fit(part, targets)
                           for (detector, _), part in zip(self.components, self._parts(features))]
        return self

    def _component_scores(self, features: np.ndarray) -> np.ndarray:
        return np.stack([detector.score_samples(part) for detector, part in zip(self.detectors_, self._parts(features))],
                        axis=1)

    def standardise(self, features: np.ndarray) -> FusedDetector:
        scores = self._component_scores(features)
        if not len(scores):
            raise DataError("the fused detector needs validation images to measure its components against")
        self.means_, self.scales_ = scores.mean(axis=0), np.maximum(scores.std(axis=0), 1e-12)
        self.reference_ = np.sort(scores, axis=0)
        return self

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        if self.means_ is None:
            raise DataError("the fused detector must be standardised on validation images before it scores")
        scores = self._component_scores(features)
        if self.fusion == "mean":
            return np.mean((scores - self.means_) / self.scales_, axis=1)
        return -np.sum(np.log(self._p_values(scores)), axis=1)

    def _p_values(self, scores: np.ndarray) -> np.ndarray:
        """Per component, the share of validation images scoring at least as high, (1 + count) / (n + 1);
        beyond the highest validation score it keeps shrinking, by exp(-distance / sd), so that
        images out there are still ordered."""
        reference, n = self.reference_, len(self.reference_)
        p_values = np.empty_like(scores, dtype=np.float64)
        for column in range(scores.shape[1]):
            above = n - np.searchsorted(reference[:, column], scores[:, column], side="left")
            beyond = np.maximum(scores[:, column] - reference[-1, column], 0.0) / self.scales_[column]
            p_values[:, column] = (1.0 + above) / (n + 1.0) * np.exp(-beyond)
        return p_values

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {"means": self.means_, "scales": self.scales_}
        if self.fusion == "fisher":
            arrays["reference"] = self.reference_
        components = []
        for index, ((detector, space), fitted) in enumerate(zip(self.components, self.detectors_)):
            part_arrays, part_settings = fitted.state()
            arrays |= {f"{index}.{key}": value for key, value in part_arrays.items()}
            components.append({"detector": detector, "space": space, "settings": part_settings})
        return arrays, {"components": components, "widths": self.widths_, "fusion": self.fusion}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> FusedDetector:
        components = settings["components"]
        detectors = [DETECTORS[part["detector"]].restore(
            {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith(f"{index}.")},
            part["settings"]) for index, part in enumerate(components)]
        return cls(components=tuple((part["detector"], part["space"]) for part in components),
                   fusion=settings.get("fusion", "mean"),  # saved before the fusion rule was a setting
                   widths_=[int(width) for width in settings["widths"]], detectors_=detectors,
                   means_=arrays["means"], scales_=arrays["scales"], reference_=arrays.get("reference"))


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
    calibrated_on: str | None = None
    """Which validation images the threshold keeps ``target_tpr`` of (``zero_shot.calibrate_on``)."""

    @classmethod
    def of(cls, detector: Detector, name: str, space: str | None, threshold: float,
           target_tpr: float | None = None, calibrated_on: str | None = None) -> DetectorState:
        arrays, settings = detector.state()
        return cls(detector.name, name, space, float(threshold), arrays, settings, target_tpr, calibrated_on)

    def to_payload(self) -> dict:
        tensors = {key: torch.as_tensor(np.ascontiguousarray(value, dtype=np.float64))
                   for key, value in self.arrays.items()}
        metadata = {**self.settings, "type": self.detector, "name": self.name, "space": self.space,
                    "threshold": self.threshold}
        calibration = {key: value for key, value in (("target_tpr", self.target_tpr),
                                                      ("calibrated_on", self.calibrated_on)) if value is not None}
        return {"tensors": tensors, "metadata": metadata | calibration}

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
        return cls(detector, name, space, threshold, arrays, metadata, metadata.pop("target_tpr", None),
                   metadata.pop("calibrated_on", None))

    def restore(self) -> Detector:
        """The fitted detector, ready to score."""
        return DETECTORS[self.detector].restore(self.arrays, self.settings)

    def describe(self) -> dict:
        """Its name, space, threshold and calibration target, for reports."""
        return {"name": self.name, "space": self.space, "threshold": self.threshold, "target_tpr": self.target_tpr,
                "calibrated_on": self.calibrated_on}


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


def open_world_precision(accepted_in: np.ndarray, valid_in: np.ndarray, accepted_unseen_by_kind: dict[str, np.ndarray],
                         unseen_share: float) -> float:
    """Precision of everything accepted as valid when unseen kinds make up ``unseen_share`` of the
    images, each unseen kind equally often (none ever being valid).

    ``accepted_in``/``valid_in`` describe the in-distribution test images; the share of each
    unseen kind's images accepted is their false-positive rate. NaN when nothing is accepted.
    """
    if not 0.0 <= unseen_share < 1.0:
        raise ParameterError(f"zero_shot.unseen_share must be in [0, 1), got {unseen_share}")
    accepted_in, valid_in = np.asarray(accepted_in, dtype=bool), np.asarray(valid_in, dtype=bool)
    images = max(len(accepted_in), 1)
    true_positive = (1.0 - unseen_share) * np.sum(accepted_in & valid_in) / images
    false_in = (1.0 - unseen_share) * np.sum(accepted_in & ~valid_in) / images
    rates = [np.mean(accepted) for accepted in accepted_unseen_by_kind.values() if len(accepted)]
    accepted = true_positive + false_in + (unseen_share * np.mean(rates) if rates else 0.0)
    return float(true_positive / accepted) if accepted > 0 else float("nan")
