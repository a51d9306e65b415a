"""A fitted detector's saved form: plain arrays and JSON settings, to and from a safetensors payload."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_classification.detectors.registry import DETECTORS, Detector
from image_classification.errors import DataError

if TYPE_CHECKING:
    from image_classification.artefacts import Checkpoint

logger = logging.getLogger(__name__)


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
    checkpoint: str | None = None
    """The :meth:`~image_classification.artefacts.Checkpoint.fingerprint` of the model whose scored index
    it was fitted on (None for detectors saved before it was recorded)."""

    @classmethod
    def of(cls, detector: Detector, name: str, space: str | None, threshold: float,
           target_tpr: float | None = None, calibrated_on: str | None = None,
           checkpoint: str | None = None) -> DetectorState:
        arrays, settings = detector.state()
        return cls(detector.name, name, space, float(threshold), arrays, settings, target_tpr, calibrated_on,
                   checkpoint)

    def to_payload(self) -> dict:
        tensors = {key: torch.as_tensor(np.ascontiguousarray(value, dtype=np.float64))
                   for key, value in self.arrays.items()}
        metadata = {**self.settings, "type": self.detector, "name": self.name, "space": self.space,
                    "threshold": self.threshold}
        calibration = {key: value for key, value in (("target_tpr", self.target_tpr),
                                                      ("calibrated_on", self.calibrated_on),
                                                      ("checkpoint", self.checkpoint)) if value is not None}
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
                   metadata.pop("calibrated_on", None), metadata.pop("checkpoint", None))

    def for_checkpoint(self, checkpoint: Checkpoint) -> DetectorState:
        """This detector, if it was fitted on the scores of this checkpoint; a :class:`DataError` if it
        was fitted for another model, whose features it would misjudge (every image flagged, say)."""
        if self.checkpoint is None:
            logger.warning("anomaly_detector was saved before detectors recorded their checkpoint, so predict "
                           "cannot tell whether it belongs to this model; run `kedro run --pipelines zero_shot` to "
                           "refit it")
        elif self.checkpoint != checkpoint.fingerprint():
            raise DataError("anomaly_detector was fitted on the scores of another model_checkpoint than the one "
                            "loaded; run `kedro run --pipelines zero_shot` to fit it for this checkpoint (after "
                            "`--pipelines score` if the scores are older than the checkpoint)")
        return self

    def restore(self) -> Detector:
        """The fitted detector, ready to score."""
        return DETECTORS[self.detector].restore(self.arrays, self.settings)

    def describe(self) -> dict:
        """Its name, space, threshold and calibration target, for reports."""
        return {"name": self.name, "space": self.space, "threshold": self.threshold, "target_tpr": self.target_tpr,
                "calibrated_on": self.calibrated_on}
