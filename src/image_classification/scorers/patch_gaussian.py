"""``patch_gaussian``: unsupervised patch evidence *at each place*: the Mahalanobis distance of an image's
most unusual patch from the valid training images' mean patch at the same grid position
(:class:`~image_classification.patch_gaussian.PatchGaussian`), negated so that higher means more like
valid. Measured, not served: its map points at small local defects better than any other score's, and
``evaluate.fold_stack_patch_gaussian`` stacks it in the fold stack (docs/decisions/0036)."""

from __future__ import annotations

import numpy as np

from image_classification.patch_gaussian import PatchGaussian
from image_classification.scorers.base import Features, Scorer, Split, register
from image_classification.scorers.patch_memory import PatchMemoryScorer


@register
class PatchGaussianScorer(Scorer):
    name = "patch_gaussian"
    column = "patch_gaussian_score"
    label = "patch Gaussian"
    description = "patch evidence at each place (negated distance from the valid mean patch at the same position)"
    reads = ("patches",)
    refit_for_out_of_fold = True  # it chooses nothing on validation

    def __init__(self, gaussian: PatchGaussian, grid: int) -> None:
        self.gaussian, self.grid = gaussian, int(grid)

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        reason = PatchMemoryScorer.unavailable(split, config)
        if reason is not None:
            return reason
        if not config.patch_gaussian:
            return "evaluate.patch_gaussian is off"
        if int((split.train.targets == 1).sum()) < 2:
            return "the train split has fewer than two readable valid images"
        return None

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> PatchGaussianScorer:
        patches = split.train.features.require("patches", cls.name)
        return cls(PatchGaussian.fit(patches[np.flatnonzero(split.train.targets == 1)]), split.grid)

    def score_samples(self, features: Features) -> np.ndarray:
        return -self.gaussian.anomaly_scores(features.require("patches", self.name))

    def defect_map(self, features: Features) -> np.ndarray:
        return self.gaussian.distances(features.require("patches", self.name)).numpy()

    @property
    def map_units(self) -> str:
        return ("Mahalanobis distance of each patch from the valid training images' mean patch at its grid position; "
                "an image's highest is its patch Gaussian anomaly score, minus its patch Gaussian score")

    @property
    def patch_grid(self) -> int:
        return self.grid

    def describe(self) -> dict:
        return {"enabled": True, "description": "PaDiM-style patch evidence: Mahalanobis distance of an image's most "
                "unusual patch from the valid train images' mean patch at its position (one shared covariance)",
                "grid": self.grid, **self.gaussian.describe()}
