"""Anomaly detectors by name: a registry (:mod:`.registry`), one module per detector family, their
saved state (:mod:`.state`), thresholds and the decision (:mod:`.calibration`) and separation
metrics (:mod:`.metrics`).

Each detector is fitted on in-distribution training images and scores new ones, higher meaning
less like anything seen in training. To add one, write a :class:`Detector` subclass with
``@register`` in ``detectors/<family>.py`` and import that module below.
"""

from image_classification.detectors.calibration import calibrate_threshold, decide
from image_classification.detectors.metrics import open_world_precision, separation_metrics
from image_classification.detectors.registry import DETECTORS, Detector, DetectorSettings, build_detector, register
from image_classification.detectors.state import DetectorState

# registration imports: each module registers its detectors. The order is the registry's order,
# which is zero_shot.detectors' default and so the order of its columns, metrics and figures.
from image_classification.detectors import knn, mahalanobis, gmm, max_softmax, fused  # noqa: E402,I001
from image_classification.detectors.fused import FUSIONS, FusedDetector  # noqa: E402
from image_classification.detectors.gmm import GMMDetector  # noqa: E402
from image_classification.detectors.knn import ClassKNNDetector, KNNDetector  # noqa: E402
from image_classification.detectors.mahalanobis import MahalanobisDetector, RelativeMahalanobisDetector  # noqa: E402
from image_classification.detectors.max_softmax import MaxSoftmaxDetector  # noqa: E402

__all__ = [
    "DETECTORS", "FUSIONS", "ClassKNNDetector", "Detector", "DetectorSettings", "DetectorState", "FusedDetector",
    "GMMDetector", "KNNDetector", "MahalanobisDetector", "MaxSoftmaxDetector", "RelativeMahalanobisDetector",
    "build_detector", "calibrate_threshold", "decide", "fused", "gmm", "knn", "mahalanobis", "max_softmax",
    "open_world_precision", "register", "separation_metrics",
]
