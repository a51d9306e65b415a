"""Patch Gaussian: how unlike the valid training images each patch is *at its own place* (PaDiM-style).

Inspection images are aligned: a busbar, a cell edge or a corner sits at the same grid position in
every image, and there looks like a defect would anywhere else. The patch Gaussian models the valid
training images' patch vectors at each grid position by their mean there and one covariance of the
deviations from those means, shared by all positions; a patch's distance is the Mahalanobis distance
of its vector from its own position's mean. A dark spot of a few pixels moves one patch far from what
valid images hold at that place, while a busbar stays where valid images have one.

Defard et al. ("PaDiM", 2020) fit one covariance per position; one shared covariance keeps the state a
few hundred kilobytes (``grid² x C`` means and a ``C x C`` whitening matrix), small enough to travel as
plain numbers inside the operating point, and docs/decisions/0036 measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from image_classification.errors import DataError
from image_classification.patches import position_moments

# added to the covariance's diagonal before it is inverted, as PaDiM does (features are of order 1)
REGULARISATION = 0.01


@dataclass
class PatchGaussian:
    """Per grid position the valid images' mean patch, and the whitening of one shared covariance.

    Attributes:
        mean: (P, C) float32, the mean patch vector at each of the P grid positions.
        whitening: (C, C) float32 ``W`` with ``W Wᵀ`` the inverse of the (regularised) covariance of the
            deviations, so a patch's squared Mahalanobis distance is ``|(x - mean) W|²``.
        images: the valid images it was fitted on.
    """

    mean: torch.Tensor
    whitening: torch.Tensor
    images: int

    @classmethod
    def fit(cls, patches: torch.Tensor, rows: int = 256) -> PatchGaussian:
        """Fitted on (N, P, C) patch vectors of valid images (at least two), ``rows`` images at a time."""
        if len(patches) < 2:
            raise DataError("the patch Gaussian needs patch vectors of at least two valid training images")
        mean = position_moments(patches, rows)[0]
        channels = patches.shape[2]
        scatter = torch.zeros(channels, channels, dtype=torch.float64)
        for start in range(0, len(patches), rows):
            deviation = (patches[start:start + rows].double() - mean).reshape(-1, channels)
            scatter += deviation.T @ deviation
        covariance = scatter / (len(patches) * patches.shape[1] - 1)
        covariance += REGULARISATION * torch.eye(channels, dtype=torch.float64)
        whitening = torch.linalg.cholesky(torch.linalg.inv(covariance))
        return cls(mean=mean.float(), whitening=whitening.float(), images=int(len(patches)))

    def distances(self, patches: torch.Tensor, rows: int = 256) -> torch.Tensor:
        """(N, P) Mahalanobis distance of every patch from the valid mean at its own grid position."""
        if tuple(patches.shape[1:]) != tuple(self.mean.shape):
            raise DataError(f"the patch Gaussian was fitted on patch vectors of shape {tuple(self.mean.shape)} per "
                            f"image and is given {tuple(patches.shape[1:])}: keep train.patch_grid as it was, or run "
                            "the evaluate pipeline again")
        out = torch.empty(patches.shape[:2])
        for start in range(0, len(patches), rows):
            whitened = (patches[start:start + rows].float() - self.mean) @ self.whitening
            out[start:start + rows] = (whitened * whitened).sum(2).sqrt()
        return out

    def anomaly_scores(self, patches: torch.Tensor) -> np.ndarray:
        """Per image: the distance of its most unusual patch (higher: less like valid)."""
        if not len(patches):
            return np.zeros(0)
        return self.distances(patches).amax(1).double().numpy()

    def describe(self) -> dict:
        return {"valid_images": self.images, "positions": int(self.mean.shape[0]), "channels": int(self.mean.shape[1]),
                "regularisation": REGULARISATION}

    def to_payload(self) -> dict:
        return {"images": self.images, "mean": self.mean.tolist(), "whitening": self.whitening.tolist()}

    @classmethod
    def from_payload(cls, payload: dict) -> PatchGaussian:
        try:
            gaussian = cls(mean=torch.tensor(payload["mean"], dtype=torch.float32),
                           whitening=torch.tensor(payload["whitening"], dtype=torch.float32),
                           images=int(payload["images"]))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"the served patch Gaussian is incomplete or malformed ({error}); run the evaluate "
                            "pipeline again") from error
        channels = gaussian.mean.shape[-1] if gaussian.mean.dim() == 2 else -1
        if gaussian.whitening.shape != (channels, channels):
            raise DataError("the served patch Gaussian's mean and whitening disagree in shape; run the evaluate "
                            "pipeline again")
        return gaussian
