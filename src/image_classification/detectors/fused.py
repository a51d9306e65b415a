"""The fused detector: several registered detectors, each on its own feature space, their scores
measured against the validation images and combined by one of :data:`FUSIONS`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from image_classification.detectors.registry import DETECTORS, Detector, DetectorSettings, build_detector, register
from image_classification.errors import DataError, ParameterError

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
