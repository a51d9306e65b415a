"""Parameters of the zero_shot pipeline (``conf/base/parameters_zero_shot.yml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from image_classification.detectors import DETECTORS, FUSIONS, DetectorSettings
from image_classification.errors import ParameterError

FEATURE_SPACES = ("embedding", "pooled")
CALIBRATIONS = ("accepted_valid", "validation")
"""Which validation images a flag threshold is set on: the valid images the classifier accepts (so
``target_tpr`` is the share of accepted valid images the flag keeps), or all of them."""


@dataclass(frozen=True)
class ZeroShotConfig:
    """Which detectors run on which features, and which one flags images.

    ``flag_detector`` is ``<detector>_<space>`` (e.g. ``knn_pooled``), ``msp`` or ``fused``.
    ``fused`` lists the columns the fused detector combines, ``fusion`` how (:data:`FUSIONS`).
    ``class_conditional`` gives class-aware detectors (mahalanobis, class_knn) the images' finer
    classes when there are more classes than labels. ``unseen_share`` is the share of images of
    unseen kinds at which the open-world precision (the precision of everything accepted as
    valid) is reported. ``calibrate_on`` says which validation images each threshold keeps
    ``target_tpr`` of (:data:`CALIBRATIONS`).
    """

    detectors: list[str] = field(default_factory=lambda: list(DETECTORS))
    feature_spaces: list[str] = field(default_factory=lambda: list(FEATURE_SPACES))
    fused: list[str] = field(default_factory=lambda: ["knn_embedding", "knn_pooled"])
    fusion: str = "fisher"
    flag_detector: str = "fused"
    class_conditional: bool = True
    target_tpr: float = 0.98
    calibrate_on: str = "accepted_valid"
    unseen_share: float = 0.1
    knn_k: int = 5
    gmm_components: int = 4

    def __post_init__(self) -> None:
        unknown = sorted(set(self.detectors) - set(DETECTORS)) + sorted(set(self.feature_spaces) - set(FEATURE_SPACES))
        if unknown:
            raise ParameterError(f"zero_shot: unknown detector or feature space {unknown}; detectors are "
                                 f"{list(DETECTORS)}, feature spaces {list(FEATURE_SPACES)}")
        if "fused" in self.detectors:
            single = {name for name, detector, _ in self._single_runs()}
            wrong = [name for name in self.fused if name not in single]
            if wrong or not self.fused:
                raise ParameterError(f"zero_shot.fused {list(self.fused)}: every component must be one of the "
                                     f"detectors run, {sorted(single)}")
        if self.flag_detector not in self.detector_names:
            raise ParameterError(f"zero_shot.flag_detector '{self.flag_detector}' is not among the detectors run: "
                                 f"{self.detector_names}")
        if not 0.0 < self.target_tpr <= 1.0:
            raise ParameterError(f"zero_shot.target_tpr must be in (0, 1], got {self.target_tpr}")
        if self.fusion not in FUSIONS:
            raise ParameterError(f"zero_shot.fusion must be one of {list(FUSIONS)}, got '{self.fusion}'")
        if self.calibrate_on not in CALIBRATIONS:
            raise ParameterError(f"zero_shot.calibrate_on must be one of {list(CALIBRATIONS)}, got "
                                 f"'{self.calibrate_on}'")
        if not 0.0 <= self.unseen_share < 1.0:
            raise ParameterError(f"zero_shot.unseen_share must be in [0, 1), got {self.unseen_share}; it is the "
                                 "share of images of unseen kinds the open-world precision assumes, e.g. 0.1")

    def detector_settings(self, seed: int) -> DetectorSettings:
        runs = {name: (detector, space) for name, detector, space in self._single_runs()}
        return DetectorSettings(knn_k=self.knn_k, gmm_components=self.gmm_components, seed=seed,
                                fused=tuple(runs[name] for name in self.fused if name in runs), fusion=self.fusion)

    def _single_runs(self) -> list[tuple[str, str, str | None]]:
        return [
            (detector, detector, None) if space is None else (f"{detector}_{space}", detector, space)
            for detector in self.detectors if not DETECTORS[detector].composite
            for space in ([None] if DETECTORS[detector].space_free else self.feature_spaces)
        ]

    @property
    def detector_runs(self) -> list[tuple[str, str, str | None]]:
        """(column name, detector, feature space) for every detector on every space; a detector
        that reads the classifier's score (msp) runs once, without a space, and the fused one once,
        on its components' spaces side by side (``embedding+pooled``)."""
        runs = self._single_runs()
        if "fused" in self.detectors:
            runs.append(("fused", "fused", fused_space(self.detector_settings(0).fused)))
        return runs

    @property
    def detector_names(self) -> list[str]:
        return [name for name, _, _ in self.detector_runs]


def fused_space(components: tuple[tuple[str, str | None], ...]) -> str:
    """The space a fused detector reads: its components' spaces joined by ``+`` (``score`` for msp)."""
    return "+".join(space or "score" for _, space in components)
