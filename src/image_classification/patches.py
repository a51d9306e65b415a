"""Patch evidence: a PatchCore-style score from a backbone's mid-level feature maps.

Global pooling averages a small defect away; a patch keeps it. Each image becomes a grid of patch
vectors: the backbone's last stride-8 and stride-16 maps, each averaged over 3x3 neighbourhoods,
brought to one ``grid`` x ``grid`` grid and concatenated along channels (for efficientnet_lite0,
40 + 112 = 152 channels). The memory bank holds patches of *valid* training images, cut down by
greedy k-center coreset selection; an image's anomaly score is the distance from its most unusual
patch (or the mean of its ``top_k`` most unusual) to the nearest patch in the memory
(Roth et al., "Towards Total Recall in Industrial Anomaly Detection", 2022).

Beside them, the same pass keeps *fine* patch vectors for the patch Gaussian's defect map
(:mod:`image_classification.fine_patches`).

Patches are computed in the same pass over the files as the pooled features (see
:func:`image_classification.runtime.extraction.extract_backbone_features`) and stored float16:
``grid * grid * channels * 2`` bytes per image (:func:`bytes_per_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from image_classification.errors import DataError, ParameterError

STRIDES = (8, 16)
CANDIDATES_PER_KEPT = 4  # the coreset chooses from at most this many patches per patch it keeps


def patch_blocks(backbone: nn.Sequential, input_size: int, strides: tuple[int, ...] = STRIDES) -> tuple[int, ...]:
    """Indices of the last block of ``backbone`` whose output has stride 8, and of the last with stride 16
    (or of each of ``strides``).

    Found by running one blank image through the blocks, so every registered backbone (and any
    ``nn.Sequential`` of blocks) works without a table of layer names.
    """
    sides = []
    with torch.inference_mode():
        parameter = next(backbone.parameters(), None)
        x = torch.zeros(1, 3, input_size, input_size, device=parameter.device if parameter is not None else None)
        modes = [(module, module.training) for module in backbone.modules()]
        backbone.eval()
        for block in backbone:
            x = block(x)
            sides.append(x.shape[-1])
        for module, training in modes:  # each as it was: train() on a slice would put frozen blocks in training mode
            module.training = training
    found = []
    for stride in strides:
        side = -(-input_size // stride)  # ceil: convolutions with padding round up
        matches = [index for index, value in enumerate(sides) if value == side]
        if not matches:
            raise ParameterError(f"the backbone has no block of stride {stride} at {input_size} px input "
                                 f"(block output sides: {sides}); patch evidence needs maps of stride "
                                 f"{' and '.join(map(str, strides))}")
        found.append(matches[-1])
    return tuple(found)


def pool_patches(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """A (N, C, H, W) map averaged over 3x3 neighbourhoods, then pooled to (N, C, grid, grid)."""
    return nn.functional.adaptive_avg_pool2d(nn.functional.avg_pool2d(feature_map, 3, 1, 1), grid)


def patch_grid_features(maps: list[torch.Tensor], grid: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """(N, grid*grid, C) patch vectors (float16, as cached) from mid-level maps [(N, C_i, H_i, W_i), ...]:
    each map averaged over 3x3 neighbourhoods, pooled to ``grid`` x ``grid``, then concatenated."""
    stacked = torch.cat([pool_patches(m.float(), grid) for m in maps], dim=1)  # N, C, grid, grid
    return stacked.flatten(2).transpose(1, 2).to(dtype).contiguous()


def position_moments(patches: torch.Tensor, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, C) float64 mean and unbiased variance of (N, P, C) patch vectors (N >= 2) at each grid
    position, summed ``rows`` images at a time so that a memory-mapped cache is never read whole."""
    total = torch.zeros(patches.shape[1:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(patches), rows):
        chunk = patches[start:start + rows].double()
        total += chunk.sum(0)
        squares += (chunk * chunk).sum(0)
    mean = total / len(patches)
    return mean, (squares - len(patches) * mean * mean) / (len(patches) - 1)


def grid_of(patches: torch.Tensor) -> int:
    """The side of the square grid that (N, grid*grid, ...) patch vectors (or values, one a patch) lie on."""
    count = patches.shape[1]
    grid = math.isqrt(count)
    if grid * grid != count:
        raise DataError(f"patch vectors hold {count} patches per image, which is not a square grid; the feature "
                        "cache was not written by this project's train pipeline: run train again")
    return grid


def bytes_per_image(grid: int, channels: int) -> int:
    """Bytes one image's float16 patches take in the feature cache."""
    return grid * grid * channels * 2


def greedy_coreset(bank: torch.Tensor, size: int, dims: int = 32, seed: int = 0) -> torch.Tensor:
    """Indices of ``size`` rows of ``bank`` chosen by greedy k-center selection: each pick is the row
    farthest from every row picked so far, so the subset covers the bank with the smallest radius.

    Distances are measured after a random projection to ``dims`` dimensions (as PatchCore does),
    which keeps each step one matrix-vector product: about 1 s for 2,000 picks from 115,000
    patches on two CPU cores.
    """
    count = len(bank)
    if size >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(bank.shape[1], dims, generator=generator) / dims ** 0.5
    z = bank.float() @ projection
    squared = (z * z).sum(1)
    nearest = torch.full((count,), float("inf"))
    chosen = torch.empty(size, dtype=torch.long)
    pick = int(torch.randint(count, (1,), generator=generator))
    for step in range(size):
        chosen[step] = pick
        centre = z[pick]
        nearest = torch.minimum(nearest, squared - 2 * (z @ centre) + centre @ centre)
        pick = int(nearest.argmax())
    return chosen


@dataclass
class PatchMemory:
    """Patches of valid training images, and the score of an image against them.

    Attributes:
        memory: float16 (M, C) patch vectors kept by the coreset.
        top_k: an image's score is the mean distance of its ``top_k`` most unusual patches.
        patches_seen: patches the coreset chose from.
    """

    memory: torch.Tensor
    top_k: int = 1
    patches_seen: int = 0

    @classmethod
    def fit(cls, patches: torch.Tensor, fraction: float = 0.1, max_size: int = 10000, top_k: int = 1,
            seed: int = 0) -> PatchMemory:
        """The memory of ``patches`` (N, P, C) of valid training images, reduced to ``fraction`` of
        their patches (at most ``max_size``) by :func:`greedy_coreset`.

        The greedy selection costs (rows it chooses from) x (rows it keeps); it chooses from at most
        ``CANDIDATES_PER_KEPT`` times as many patches as it keeps, drawn at random, so a large training
        set costs seconds, not minutes."""
        if len(patches) == 0:
            raise ParameterError("patch evidence needs at least one readable valid training image")
        if not 0.0 < fraction <= 1.0 or max_size < 1 or top_k < 1:
            raise ParameterError(f"evaluate.patch_coreset_fraction must be in (0, 1], patch_memory_max at least 1 "
                                 f"and patch_top_k at least 1; got {fraction}, {max_size}, {top_k}")
        bank = patches.reshape(-1, patches.shape[-1])
        seen = len(bank)
        size = max(1, min(max_size, int(round(seen * fraction))))
        if seen > CANDIDATES_PER_KEPT * size:
            drawn = torch.randperm(seen, generator=torch.Generator().manual_seed(seed))[:CANDIDATES_PER_KEPT * size]
            bank = bank[drawn.sort().values]
        keep = greedy_coreset(bank, size, seed=seed)
        return cls(memory=bank[keep].to(torch.float16).contiguous(), top_k=min(top_k, patches.shape[1]),
                   patches_seen=seen)

    def distances(self, patches: torch.Tensor, rows: int = 512) -> torch.Tensor:
        """(N, P) distance of every patch to its nearest neighbour in the memory.

        The squared distance |x - m|^2 is |x|^2 + (|m|^2 - 2 x.m); the bracket is one fused matrix
        product (``addmm``) over ``rows`` patches at a time, and |x|^2 is added after the minimum over
        the memory, so the (rows, memory) block is written once and read once. That keeps scoring at
        the rate of the matrix product (faster than forming the three terms separately, with the same
        distances: docs/decisions/0014) and its scratch memory
        at rows x memory floats (20 MB for a memory of 10,000) rather than hundreds of megabytes.
        """
        memory = self.memory.float()
        memory_t = memory.T.contiguous()
        memory_squared = (memory * memory).sum(1)
        flat = patches.reshape(-1, patches.shape[-1])
        out = torch.empty(len(flat))
        for start in range(0, len(flat), rows):
            chunk = flat[start:start + rows].float()
            nearest = torch.addmm(memory_squared, chunk, memory_t, alpha=-2).amin(1)
            out[start:start + rows] = (nearest + (chunk * chunk).sum(1)).clamp_min(0).sqrt()
        return out.reshape(len(patches), patches.shape[1])

    def anomaly_scores(self, patches: torch.Tensor) -> np.ndarray:
        """Per image: the mean distance of its ``top_k`` farthest patches (higher: less like valid)."""
        distances = self.distances(patches)
        return distances.topk(self.top_k, dim=1).values.mean(1).numpy()

    def describe(self) -> dict:
        return {"memory_patches": int(len(self.memory)), "patches_seen": int(self.patches_seen),
                "channels": int(self.memory.shape[1]), "top_k": int(self.top_k)}


class ImageDropout(nn.Module):
    """Dropout of hidden units with one mask per image, shared by all its patches (inputs (N, P, C)).

    Regularises at least as well as elementwise dropout here at a fraction of the random numbers,
    which took most of the training time (docs/decisions/0020).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand(x.shape[0], 1, x.shape[2]) >= self.p) / (1 - self.p)


@dataclass
class PatchClassifier:
    """Supervised patch evidence: a small network scores every patch, and an image is as defective as
    the mean of its ``top_k`` most defective patches (multiple-instance learning: an image is invalid
    when some of its patches are, valid when none is). It is trained on image labels alone, so it
    learns what the *invalid* training images' local defects look like, which the valid-only memory of
    :class:`PatchMemory` cannot; on defects-dev it ranks images better than either the memory or the
    pooled features (docs/decisions/0019).

    With ``positional`` fits, each grid position has its own mean (the training images' average patch
    there), so a patch is read against what is usual at its place in the image: on aligned inspection
    photos (cells, parts under a fixed camera) a busbar or an edge is then background, and the same
    dark line elsewhere is not. On defects-dev it ranks a little better, but the out-of-fold
    threshold served with it kept less recall, so evaluate leaves it off unless asked
    (docs/decisions/0031).

    Attributes:
        network: per-patch scorer, (…, C) standardised patch vectors to (…, 1) defect logits.
        mean: the training patches' mean, per channel (C,) or, positional, per grid position (P, C).
        std: per-channel standard deviation of the training patches less that mean.
        top_k: patches averaged into an image's score.
        epochs: epochs it was trained for.
    """

    network: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    top_k: int
    epochs: int

    @classmethod
    def fit(cls, patches: torch.Tensor, targets: np.ndarray, epochs: int = 30, hidden: int = 64, top_k: int = 10,
            seed: int = 0, batch_size: int = 32, learning_rate: float = 1e-3, weight_decay: float = 1e-3,
            positional: bool = False) -> PatchClassifier:
        """Trained on ``patches`` (N, P, C) of training images and their ``targets`` (1 valid, 0 invalid):
        binary cross-entropy of each image's score (the mean of its ``top_k`` highest patch logits)
        against "invalid", Adam, ``epochs`` passes in batches of ``batch_size`` images, dropout of the
        hidden units (:class:`ImageDropout`). ``positional``: standardise each grid position by its own
        mean (see the class). Deterministic for a given ``seed``; the global random state is left as
        it was."""
        targets = np.asarray(targets)
        if len(patches) != len(targets) or set(np.unique(targets).tolist()) != {0, 1}:
            raise ParameterError("the patch classifier needs training images of both labels, one target per image; "
                                 f"got {len(patches)} images and targets {sorted(set(np.unique(targets).tolist()))}")
        if epochs < 1 or hidden < 1 or top_k < 1:
            raise ParameterError(f"evaluate.patch_classifier_epochs, _hidden and _top_k must be at least 1; got "
                                 f"{epochs}, {hidden} and {top_k}")
        top_k = min(top_k, patches.shape[1])
        if positional:
            inputs = patches.float()
            mean = inputs.mean(0)
            inputs = inputs - mean  # a new tensor: the caller's patches stay as they were
            std = inputs.reshape(-1, inputs.shape[-1]).std(0).clamp_min(1e-6)
            inputs /= std
        else:
            flat = patches.reshape(-1, patches.shape[-1]).float()
            mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
            del flat
            inputs = (patches.float() - mean) / std
        invalid = torch.as_tensor(1 - targets, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = nn.Sequential(nn.Linear(patches.shape[-1], hidden), nn.ReLU(), ImageDropout(0.3),
                                    nn.Linear(hidden, 1))
            optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
            network.train()
            for _ in range(epochs):
                for batch in torch.randperm(len(inputs)).split(batch_size):
                    logits = network(inputs[batch]).squeeze(-1).topk(top_k, dim=1).values.mean(1)
                    loss = nn.functional.binary_cross_entropy_with_logits(logits, invalid[batch])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
        network.eval()
        return cls(network=network, mean=mean, std=std, top_k=top_k, epochs=epochs)

    def patch_logits(self, patches: torch.Tensor, rows: int = 256) -> torch.Tensor:
        """(N, P) float32 defect logit of every patch (higher: more defective); an image's defect
        logit is the mean of its ``top_k`` highest."""
        if self.mean.dim() == 2 and patches.shape[1] != self.mean.shape[0]:
            raise DataError(f"the patch classifier was fitted on a grid of {self.mean.shape[0]} patches per image and "
                            f"is given {patches.shape[1]}: keep train.patch_grid as it was, or run the evaluate "
                            "pipeline again")
        out = torch.empty(patches.shape[:2], dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, len(patches), rows):
                chunk = (patches[start:start + rows].float() - self.mean) / self.std
                out[start:start + rows] = self.network(chunk).squeeze(-1)
        return out

    def image_logits(self, patch_logits: torch.Tensor) -> torch.Tensor:
        """(N,) defect logit per image from its (N, P) patch logits: the mean of the ``top_k`` highest."""
        return patch_logits.topk(self.top_k, dim=1).values.mean(1)

    def scores(self, patches: torch.Tensor, rows: int = 256) -> np.ndarray:
        """Per image, the probability of valid: the sigmoid of minus the mean of its ``top_k`` highest
        patch logits (a probability like the model's and the baseline's, so that one threshold range
        and one meaning of ``score`` hold whichever candidate is served)."""
        return torch.sigmoid(-self.image_logits(self.patch_logits(patches, rows)).double()).numpy().astype(np.float32)

    def describe(self) -> dict:
        return {"channels": int(self.std.shape[0]), "hidden": int(self.network[0].out_features),
                "top_k": int(self.top_k), "epochs": int(self.epochs), "positional": self.mean.dim() == 2}

    def to_payload(self, grid: int) -> dict:
        """The classifier as plain numbers (JSON: nothing to unpickle), with the patch ``grid`` it reads,
        so that an operating point can serve it (see :meth:`from_payload`)."""
        first, last = self.network[0], self.network[3]
        return {"grid": int(grid), "top_k": int(self.top_k), "epochs": int(self.epochs),
                "mean": self.mean.tolist(), "std": self.std.tolist(),
                "hidden_weight": first.weight.detach().tolist(), "hidden_bias": first.bias.detach().tolist(),
                "output_weight": last.weight.detach().tolist(), "output_bias": last.bias.detach().tolist()}

    @classmethod
    def from_payload(cls, payload: dict) -> PatchClassifier:
        """The classifier :meth:`to_payload` wrote; a :class:`DataError` naming what is inconsistent."""
        try:
            hidden_weight = torch.tensor(payload["hidden_weight"], dtype=torch.float32)
            tensors = {key: torch.tensor(payload[key], dtype=torch.float32)
                       for key in ("mean", "std", "hidden_bias", "output_weight", "output_bias")}
            hidden, channels = hidden_weight.shape
            shapes_agree = (tensors["std"].shape == (channels,)
                            and tensors["mean"].shape in ((channels,), (int(payload["grid"]) ** 2, channels))
                            and tensors["hidden_bias"].shape == (hidden,)
                            and tensors["output_weight"].shape == (1, hidden)
                            and tensors["output_bias"].shape == (1,) and int(payload["top_k"]) >= 1)
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"the served patch classifier's weights are incomplete or malformed ({error}); run the "
                            "evaluate pipeline again") from error
        if not shapes_agree:
            raise DataError("the served patch classifier's weights have inconsistent shapes; run the evaluate pipeline "
                            "again")
        network = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), ImageDropout(0.3), nn.Linear(hidden, 1))
        with torch.no_grad():
            network[0].weight.copy_(hidden_weight)
            network[0].bias.copy_(tensors["hidden_bias"])
            network[3].weight.copy_(tensors["output_weight"])
            network[3].bias.copy_(tensors["output_bias"])
        return cls(network=network.eval(), mean=tensors["mean"], std=tensors["std"], top_k=int(payload["top_k"]),
                   epochs=int(payload.get("epochs", 0)))


@dataclass
class PatchEnsemble:
    """Patch classifiers whose probabilities of valid are averaged: the cross-validation's fold fits,
    each trained on all of its fold's other images: a threshold chosen on their out-of-fold scores held
    its precision more often on the ensemble than on one fit on the train split (docs/decisions/0021).
    One member is a single classifier."""

    members: list[PatchClassifier]

    def scores(self, patches: torch.Tensor) -> np.ndarray:
        """Per image, the mean of the members' probabilities of valid."""
        return np.mean([member.scores(patches) for member in self.members], axis=0).astype(np.float32)

    def patch_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, P) the members' mean defect logit of every patch (for one member, the mean of an image's
        ``top_k`` highest is its defect logit, minus the logit of its score)."""
        return torch.stack([member.patch_logits(patches) for member in self.members]).mean(0)

    def to_payload(self, grid: int) -> dict:
        """The members as plain numbers (:meth:`PatchClassifier.to_payload`), with the patch grid."""
        return {"grid": int(grid), "members": [member.to_payload(grid) for member in self.members]}

    @classmethod
    def from_payload(cls, payload: dict) -> PatchEnsemble:
        """An ensemble :meth:`to_payload` wrote, or one :meth:`PatchClassifier.to_payload` classifier."""
        members = payload.get("members") if "members" in payload else [payload]
        if not members:
            raise DataError("the served patch classifier holds no members; run the evaluate pipeline again")
        return cls([PatchClassifier.from_payload(member) for member in members])
