"""The global gate: is an image like the valid training images *as a whole*? The fold stack scores 0 for one
that is not (docs/decisions/0032): a patch score cannot see a defect that covers the whole image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from image_classification.errors import DataError
from image_classification.patches import position_moments


@dataclass
class GlobalGate:
    """Is an image like the valid training images *as a whole*?

    Each patch vector is standardised by the valid training images' mean and standard deviation at
    its own grid position; an image's statistic is the median over its patches of the mean squared
    standardised value. A local defect moves a few patches and leaves the median where valid images
    have it; a black, white, grey or blurred image moves every patch. ``cut`` is the largest
    statistic of any valid image it was fitted on: an image beyond it is unlike every one of them.
    A new valid image exceeds the largest of n exchangeable valid images with probability 1/(n + 1).
    """

    mean: torch.Tensor  # (P, C)
    std: torch.Tensor  # (P, C)
    cut: float
    images: int

    @classmethod
    def fit(cls, patches: torch.Tensor, rows: int = 256) -> GlobalGate:
        """Fitted on (N, P, C) patch vectors of valid images (at least two)."""
        if len(patches) < 2:
            raise DataError("the global gate needs patch vectors of at least two valid training images")
        mean, variance = position_moments(patches, rows)
        gate = cls(mean=mean.float(), std=variance.clamp_min(0).sqrt().float().clamp_min(1e-3), cut=float("inf"),
                   images=int(len(patches)))
        gate.cut = float(gate.statistics(patches).max())
        return gate

    def statistics(self, patches: torch.Tensor, rows: int = 256) -> np.ndarray:
        """Per image: the median over its patches of the mean squared standardised patch value."""
        if tuple(patches.shape[1:]) != tuple(self.mean.shape):
            raise DataError(f"the global gate was fitted on patch vectors of shape {tuple(self.mean.shape)} per image "
                            f"and is given {tuple(patches.shape[1:])}: keep train.patch_grid as it was, or run the "
                            "evaluate pipeline again")
        out = np.empty(len(patches), dtype=np.float64)
        for start in range(0, len(patches), rows):
            z = (patches[start:start + rows].float() - self.mean) / self.std
            out[start:start + rows] = (z * z).mean(2).median(1).values.double().numpy()
        return out

    def passes(self, patches: torch.Tensor) -> np.ndarray:
        """True where an image is within what the valid training images span."""
        return self.statistics(patches) <= self.cut

    def to_payload(self) -> dict:
        return {"cut": self.cut, "images": self.images, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_payload(cls, payload: dict) -> GlobalGate:
        try:
            gate = cls(mean=torch.tensor(payload["mean"], dtype=torch.float32),
                       std=torch.tensor(payload["std"], dtype=torch.float32), cut=float(payload["cut"]),
                       images=int(payload["images"]))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"the served global gate is incomplete or malformed ({error}); run the evaluate pipeline "
                            "again") from error
        if gate.mean.dim() != 2 or gate.mean.shape != gate.std.shape:
            raise DataError("the served global gate's mean and standard deviation disagree in shape; run the evaluate "
                            "pipeline again")
        return gate
