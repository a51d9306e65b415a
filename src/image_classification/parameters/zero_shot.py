"""Parameters of the zero_shot pipeline (``conf/base/parameters_zero_shot.yml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from image_classification.anomaly import DETECTORS, DetectorSettings
from image_classification.errors import ParameterError

FEATURE_SPACES = ("embedding", "pooled")


@dataclass(frozen=True)
class ZeroShotConfig:
    """Which detectors run on which features, and which one flags images.

    ``flag_detector`` is ``<detector>_<space>`` (e.g. ``knn_pooled``), or ``msp``.
    """

    detectors: list[str] = field(default_factory=lambda: list(DETECTORS))
    feature_spaces: list[str] = field(default_factory=lambda: list(FEATURE_SPACES))
    flag_detector: str = "knn_pooled"
    target_tpr: float = 0.95
    knn_k: int = 5
    gmm_components: int = 4

    def __post_init__(self) -> None:
        unknown = sorted(set(self.detectors) - set(DETECTORS)) + sorted(set(self.feature_spaces) - set(FEATURE_SPACES))
        if unknown:
            raise ParameterError(f"zero_shot: unknown detector or feature space {unknown}; detectors are "
                                 f"{list(DETECTORS)}, feature spaces {list(FEATURE_SPACES)}")
        if self.flag_detector not in self.detector_names:
            raise ParameterError(f"zero_shot.flag_detector '{self.flag_detector}' is not among the detectors run: "
                                 f"{self.detector_names}")
        if not 0.0 < self.target_tpr <= 1.0:
            raise ParameterError(f"zero_shot.target_tpr must be in (0, 1], got {self.target_tpr}")

    def detector_settings(self, seed: int) -> DetectorSettings:
        return DetectorSettings(knn_k=self.knn_k, gmm_components=self.gmm_components, seed=seed)

    @property
    def detector_runs(self) -> list[tuple[str, str, str | None]]:
        """(column name, detector, feature space) for every detector on every space; a detector
        that reads the classifier's score (msp) runs once, without a space."""
        return [
            (detector, detector, None) if space is None else (f"{detector}_{space}", detector, space)
            for detector in self.detectors
            for space in ([None] if DETECTORS[detector].space_free else self.feature_spaces)
        ]

    @property
    def detector_names(self) -> list[str]:
        return [name for name, _, _ in self.detector_runs]
