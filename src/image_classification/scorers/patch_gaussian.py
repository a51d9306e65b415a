"""``patch_gaussian``: unsupervised patch evidence *at each place*: the Mahalanobis distance of an image's
most unusual fine patch from the valid training images' mean fine patch at the same grid position
(:class:`~image_classification.patch_gaussian.PatchGaussian` on the stride-4 and -8 maps of
:func:`~image_classification.fine_patches.fine_patch_features`, 28 x 28 at 224 px), negated so that
higher means more like valid; its map is each patch grid cell's highest fine distance
(docs/decisions/0038). Its score is measured, not served; its map points at small local defects better
than any other score's, so it is the defect map served beside the served score
(``evaluate.defect_map_from``, docs/decisions/0037). ``evaluate.fold_stack_patch_gaussian`` stacks a
Gaussian of the 14 x 14 patch vectors in the fold stack (docs/decisions/0036)."""

from __future__ import annotations

import math

import numpy as np
import torch

from image_classification.errors import DataError
from image_classification.patch_gaussian import PatchGaussian
from image_classification.fine_patches import max_to_grid
from image_classification.patches import grid_of
from image_classification.scorers.base import Features, Scorer, Split, register
from image_classification.scorers.patch_memory import PatchMemoryScorer


RARE = 0.999  # a patch as far from its place's valid mean as one valid training patch in a thousand is drawn at 0.5
LOG_ODDS = math.log(RARE / (1 - RARE))
SCALE_IMAGES = 2000  # the scale is read on at most this many valid images, evenly spaced (>= 390,000 patches at grid 14)
FEATURES = "fine"  # what its payload's Gaussian was fitted on; a payload without it was fitted on the patch vectors


@register
class PatchGaussianScorer(Scorer):
    name = "patch_gaussian"
    column = "patch_gaussian_score"
    label = "patch Gaussian"
    description = "patch evidence at each place (negated distance from the valid mean patch at the same position)"
    reads = ("patches", "fine_patches")
    refit_for_out_of_fold = True  # it chooses nothing on validation
    locates = True

    def __init__(self, gaussian: PatchGaussian, grid: int, median: float, rare: float) -> None:
        self.gaussian, self.grid = gaussian, int(grid)
        # the valid training patches' median and 1-in-1000 distance: the map's scale (:meth:`log_odds`)
        self.median, self.rare = float(median), float(rare)

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        reason = PatchMemoryScorer.unavailable(split, config)
        if reason is not None:
            return reason
        if not config.patch_gaussian:
            return "evaluate.patch_gaussian is off"
        if split.train.features.fine_patches is None:
            return "the feature cache holds no fine patch vectors (it was written before they were kept): run train again"
        if int((split.train.targets == 1).sum()) < 2:
            return "the train split has fewer than two readable valid images"
        return None

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> PatchGaussianScorer:
        fine = split.train.features.require("fine_patches", cls.name)
        return cls.of_valid(fine[np.flatnonzero(split.train.targets == 1)], split.grid)

    @classmethod
    def of_valid(cls, valid: torch.Tensor, grid: int) -> PatchGaussianScorer:
        """Fitted on (N, side², C) fine patch vectors of valid images, its map's scale on their map
        cells (each ``grid`` x ``grid`` cell's highest distance; on :data:`SCALE_IMAGES` images at most,
        evenly spaced: one more pass over a large set would double the fit's time for the same two quantiles)."""
        if grid_of(valid) < grid:
            raise DataError(f"the fine patch vectors' grid ({grid_of(valid)}) is coarser than train.patch_grid ({grid}); "
                            "lower train.patch_grid")
        gaussian = PatchGaussian.fit(valid)
        rows = np.unique(np.linspace(0, len(valid) - 1, min(len(valid), SCALE_IMAGES)).round().astype(np.int64))
        cells = max_to_grid(gaussian.distances(valid[torch.from_numpy(rows)]), grid)
        median, rare = np.quantile(cells.numpy().ravel(), [0.5, RARE])
        return cls(gaussian, grid, median, rare)

    def score_samples(self, features: Features) -> np.ndarray:
        return -self.gaussian.anomaly_scores(features.require("fine_patches", self.name))

    def log_odds(self, distances: np.ndarray) -> np.ndarray:
        """Distances on the maps' scale, the defect log-odds every overlay draws (sigmoid: a patch's
        defect probability): ``ln(999) (d - d999) / (d999 - d50)``, with ``d50`` and ``d999`` the valid
        training patches' median and 99.9th-percentile distances: 0 (drawn at 0.5) as unusual as one
        valid patch in a thousand, -6.9 (clear) the median valid patch."""
        width = max(self.rare - self.median, 1e-6)
        return (LOG_ODDS * (np.asarray(distances, dtype=np.float64) - self.rare) / width).astype(np.float32)

    def defect_map(self, features: Features) -> np.ndarray:
        distances = self.gaussian.distances(features.require("fine_patches", self.name))
        return self.log_odds(max_to_grid(distances, self.grid).numpy())

    @property
    def map_units(self) -> str:
        return (f"defect log-odds of each patch from d, the highest Mahalanobis distance of the fine patches it holds "
                f"from the valid training images' mean fine patch at their place: ln(999) (d - {self.rare:.4g}) / "
                f"({self.rare:.4g} - {self.median:.4g}), the valid training patches' 99.9th percentile and median d "
                "(0: as unusual as one valid patch in a thousand); an image's highest is its patch Gaussian anomaly "
                "score on that scale")

    @property
    def patch_grid(self) -> int:
        return self.grid

    def describe(self) -> dict:
        return {"enabled": True, "description": "PaDiM-style patch evidence: Mahalanobis distance of an image's most "
                "unusual fine patch (stride-4 and -8 maps) from the valid train images' mean fine patch at its "
                "position (one shared covariance)", "fine_grid": int(math.isqrt(self.gaussian.mean.shape[0])),
                "grid": self.grid, "valid_patch_distance_median": self.median,
                "valid_patch_distance_999": self.rare, **self.gaussian.describe()}

    def to_payload(self) -> dict:
        return {"grid": self.grid, "features": FEATURES, "gaussian": self.gaussian.to_payload(), "median": self.median,
                "rare": self.rare}

    @classmethod
    def from_payload(cls, payload: dict) -> PatchGaussianScorer:
        if not isinstance(payload, dict) or not {"gaussian", "grid", "median", "rare"} <= set(payload):
            raise DataError("the served patch Gaussian map is incomplete (it needs grid, gaussian, median and rare); "
                            "run the evaluate pipeline again")
        if payload.get("features") != FEATURES:
            raise DataError("the served patch Gaussian map was fitted on the patch vectors by an earlier version, not "
                            "on fine patch vectors; run the train and evaluate pipelines again")
        gaussian = PatchGaussian.from_payload(payload["gaussian"])
        grid, side = int(payload["grid"]), math.isqrt(gaussian.mean.shape[0])
        if side * side != gaussian.mean.shape[0] or side < grid:
            raise DataError(f"the served patch Gaussian map says grid {grid} but holds {gaussian.mean.shape[0]} "
                            "positions; run the evaluate pipeline again")
        return cls(gaussian, grid, float(payload["median"]), float(payload["rare"]))
