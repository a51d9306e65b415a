"""``patch``: unsupervised patch evidence, PatchCore-style: how far an image's most unusual patches lie
from a memory of the valid training images' patches (:class:`~image_classification.patches.PatchMemory`),
negated so that higher means more like valid. Measured and stacked; not served."""

from __future__ import annotations

import numpy as np

from image_classification.patches import PatchMemory
from image_classification.scorers.base import Features, Scorer, Split, register


@register
class PatchMemoryScorer(Scorer):
    name = "patch"
    column = "patch_score"
    label = "patch evidence"
    description = "patch evidence (negated distance to the valid patch memory)"
    reads = ("patches",)

    def __init__(self, memory: PatchMemory, train_valid_images: int, grid: int) -> None:
        self.memory, self.train_valid_images, self.grid = memory, train_valid_images, grid

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        if not config.patch_evidence:
            return "evaluate.patch_evidence is off"
        if split.train.features.patches is None:
            return "the feature cache holds no patches (train.patch_grid is 0)"
        if not (split.train.targets == 1).any():
            return "the train split has no readable valid image"
        return None

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> PatchMemoryScorer:
        valid = np.flatnonzero(split.train.targets == 1)
        patches = split.train.features.require("patches", cls.name)
        memory = PatchMemory.fit(patches[valid], config.patch_coreset_fraction, config.patch_memory_max,
                                 config.patch_top_k, seed)
        return cls(memory, len(valid), split.grid)

    def score_samples(self, features: Features) -> np.ndarray:
        return -self.memory.anomaly_scores(features.require("patches", self.name))

    def defect_map(self, features: Features) -> np.ndarray:
        return self.memory.distances(features.require("patches", self.name)).numpy()

    @property
    def map_units(self) -> str:
        return (f"distance of each patch to its nearest valid training patch; an image's top-{self.memory.top_k} mean "
                "is its patch anomaly score, minus its patch score")

    def describe(self) -> dict:
        return {"enabled": True, "description": "PatchCore-style patch evidence: distance of an image's most unusual "
                "patches to a coreset of the valid train images' patches", "train_valid_images": self.train_valid_images,
                "grid": self.grid, **self.memory.describe()}
