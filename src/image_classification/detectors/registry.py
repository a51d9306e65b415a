"""Anomaly detectors by name: the :class:`Detector` surface, the settings it is built from, and the registry.

Every detector has the shape of a scikit-learn estimator: ``fit(x, y) -> self``,
``score_samples(x)`` (higher meaning less like anything seen in training), its fitted state in
attributes ending in ``_``. Each one also owns its name (the key ``zero_shot.detectors`` uses) and
how its state is saved as plain arrays and restored (:class:`~.state.DetectorState`, never a
pickle). A new detector is one class with ``@register`` in a module of this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from image_classification.errors import ParameterError

DETECTORS: dict[str, type[Detector]] = {}
"""Every registered detector class by name, in registration order (``zero_shot.detectors``' default)."""


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
    """How the fused detector combines its components (:data:`~.fused.FUSIONS`)."""


class Detector:
    """fit on in-distribution features (and labels); score_samples: higher = more anomalous.

    Subclasses set ``name``, implement ``fit`` and ``score_samples``, and say how they are built
    (``create``), saved (``state``: arrays and JSON settings) and restored (``restore``).
    ``space_free`` detectors read the classifier's score, not a feature space; ``composite`` ones
    read several spaces side by side (see :class:`~.fused.FusedDetector`).
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


def build_detector(name: str, settings: DetectorSettings | None = None) -> Detector:
    """An unfitted detector by its registered name."""
    if name not in DETECTORS:
        raise ParameterError(f"unknown detector '{name}'; choose one of {sorted(DETECTORS)}")
    return DETECTORS[name].create(settings or DetectorSettings())
