"""Nearest-neighbour detectors: distance to the k-th nearest training image, overall or per class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from image_classification.detectors.registry import Detector, DetectorSettings, register
from image_classification.errors import DataError


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
