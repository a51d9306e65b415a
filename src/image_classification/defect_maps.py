"""Defect maps: *where* the served score sees a defect.

A defect map is one value per patch of the ``grid`` x ``grid`` patch grid the backbone's pass already
computes (:mod:`image_classification.patches`). One orientation and meaning for every map:

- the grid covers the whole upright image: after the EXIF orientation is applied and before the
  square resize to the model's input (nothing is cropped), so patch (r, c) covers rows
  ``r * H / grid`` to ``(r + 1) * H / grid`` and columns ``c * W / grid`` to ``(c + 1) * W / grid`` of the
  upright image, whatever its size;
- values are stored row-major from the top-left (``values[r * grid + c]``);
- higher = more defective, in the units of the scorer that drew it (``map_units`` says which): for the
  patch classifier, a defect log-odds whose top-k mean is the image's defect log-odds (minus the logit
  of its score), so the map and the score say the same thing in the same units.

:func:`upsample` spreads a map smoothly (bilinear, values at the patch centres) over an image's
pixels; :func:`overlay` draws it on the image (:func:`overlay_colours` and :func:`overlay_key` give its
colours to colour bars and interactive views); :func:`peak` finds its highest patch; :func:`pointing_hit`
and :func:`pixel_auroc` measure a map against a known defect mask (benchmarks/defect_maps.py,
docs/decisions/0033).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib import colormaps
from sklearn.metrics import roc_auc_score

from image_classification.errors import DataError

# below this defect probability a patch is drawn fully transparent; above it the colour fades in
OVERLAY_FLOOR = 0.5
OVERLAY_ALPHA = 0.6
OVERLAY_COLORMAP = "inferno"


def grid_of_map(values: np.ndarray) -> int:
    """The side of the square grid a flat map of ``grid²`` values was drawn on."""
    count = int(np.asarray(values).shape[-1])
    grid = math.isqrt(count)
    if grid * grid != count or count == 0:
        raise DataError(f"a defect map holds {count} values, which is not a square grid")
    return grid


def as_grid(values: np.ndarray) -> np.ndarray:
    """A flat row-major map (grid²,) as its (grid, grid) array."""
    values = np.asarray(values, dtype=np.float32)
    grid = grid_of_map(values)
    return values.reshape(grid, grid)


def upsample(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) float32: a flat map spread over an image of that size, bilinear between the
    patch centres (each patch's value at the centre of the region it covers), held flat at the borders."""
    return _upsampled(values, height, width).numpy()


def _upsampled(values: np.ndarray, height: int, width: int) -> torch.Tensor:
    grid = torch.from_numpy(as_grid(values).copy())[None, None]
    return torch.nn.functional.interpolate(grid, size=(int(height), int(width)), mode="bilinear",
                                           align_corners=False)[0, 0]


def defect_probability(values: np.ndarray) -> np.ndarray:
    """A map in defect log-odds as defect probabilities (0..1), the scale overlays are drawn on."""
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))


def overlay(image: np.ndarray, values: np.ndarray, floor: float = OVERLAY_FLOOR, alpha: float = OVERLAY_ALPHA,
            colormap: str = OVERLAY_COLORMAP) -> np.ndarray:
    """The (H, W, 3) uint8 ``image`` with its map (defect log-odds) drawn over it: a patch whose defect
    probability is at most ``floor`` leaves the image as it is; above it the colour (``colormap`` of the
    probability) fades in up to ``alpha`` at probability 1. One fixed scale for every image, so that a
    valid image looks clean and two overlays can be compared."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    height, width = image.shape[:2]
    # 256 levels of probability, looked up: the colours of overlay_colours at a fraction of the cost
    level = torch.sigmoid(_upsampled(values, height, width)).mul_(255).round_().to(torch.uint8).numpy()
    colours, weights = overlay_colours(np.linspace(0.0, 1.0, 256), floor, alpha, colormap)
    colours, weight = (colours * 255).astype(np.float32), weights.astype(np.float32)[level][..., None]
    blended = image[..., :3].astype(np.float32) * (1.0 - weight) + colours[level] * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay_colours(probability: np.ndarray, floor: float = OVERLAY_FLOOR, alpha: float = OVERLAY_ALPHA,
                    colormap: str = OVERLAY_COLORMAP) -> tuple[np.ndarray, np.ndarray]:
    """The colour (RGB in 0..1, shape ``probability.shape + (3,)``) and its opacity (0..``alpha``) that
    :func:`overlay` draws at each defect probability: what a colour bar or an interactive heat map
    shows, so that every view of a map reads on the same scale."""
    probability = np.asarray(probability, dtype=np.float64)
    colours = colormaps[colormap](probability)[..., :3]
    return colours, alpha * np.clip((probability - floor) / (1.0 - floor), 0.0, 1.0)


def overlay_key(length: int = 256, background: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A colour bar of :func:`overlay`: defect probabilities 0..1 (``length`` of them) and the (1,
    ``length``, 3) uint8 strip the overlay draws for each on a plain ``background`` grey."""
    probability = np.linspace(0.0, 1.0, int(length))
    colours, weight = overlay_colours(probability)
    blended = background / 255.0 * (1.0 - weight[:, None]) + colours * weight[:, None]
    return probability, np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)[None]


def peak(values: np.ndarray) -> tuple[float, int, int]:
    """A map's highest value and the (row, column) of the patch that holds it."""
    grid = as_grid(values)
    row, column = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
    return float(grid[row, column]), int(row), int(column)


def top_k_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Per map (rows of an (N, grid²) array), the mean of its ``k`` highest values."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    k = max(1, min(int(k), values.shape[1]))
    return -np.sort(-values, axis=1)[:, :k].mean(1)


def mask_cells(mask: np.ndarray, grid: int, dilate: int = 1) -> np.ndarray:
    """(grid, grid) bool: the patches a (H, W) defect ``mask`` touches, grown by ``dilate`` patches
    each way (a patch's value is pooled over its neighbours, so a defect on a patch border may peak
    one patch over)."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    rows, columns = np.nonzero(mask)
    cells = np.zeros((grid, grid), dtype=bool)
    cells[np.minimum(rows * grid // height, grid - 1), np.minimum(columns * grid // width, grid - 1)] = True
    if dilate:
        grown = cells.copy()
        for r, c in zip(*np.nonzero(cells)):
            grown[max(0, r - dilate):r + dilate + 1, max(0, c - dilate):c + dilate + 1] = True
        cells = grown
    return cells


def pointing_hit(values: np.ndarray, mask: np.ndarray, dilate: int = 1) -> bool:
    """Whether the map's maximum lies on a patch the defect ``mask`` touches, dilated by ``dilate`` patches."""
    grid = as_grid(values)
    row, column = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return bool(mask_cells(mask, grid.shape[0], dilate)[row, column])


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """The pixel AUROC of upsampled maps against defect masks, every pixel of every image pooled (as
    MVTec AD's pixel AUROC is): how well a map's value tells a defect pixel from a clean one."""
    if len(maps) != len(masks) or not maps:
        raise ValueError("pixel_auroc needs one mask per map, and at least one")
    scores, truth = [], []
    for values, mask in zip(maps, masks):
        mask = np.asarray(mask, dtype=bool)
        scores.append(upsample(values, *mask.shape).ravel())
        truth.append(mask.ravel())
    truth = np.concatenate(truth)
    if truth.all() or not truth.any():
        raise ValueError("pixel_auroc needs both defect and clean pixels")
    return float(roc_auc_score(truth, np.concatenate(scores)))
