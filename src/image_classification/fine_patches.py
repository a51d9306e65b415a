"""Fine patch vectors: what the patch Gaussian's defect map reads (docs/decisions/0038).

The patch vectors (:mod:`image_classification.patches`) average each 3x3 neighbourhood of the
stride-8 and -16 maps onto a 14 x 14 grid, about 32 px of a 224 px input a vector: a crack one pixel
wide or a speck of a few pixels is a sliver of that and barely moves it. The same backbone pass also
keeps the stride-4 and stride-8 maps on the stride-8 map's own grid (28 x 28 at 224 px), unsmoothed:
64 channels for EfficientNet-Lite0, ``side² x 64 x 2`` bytes per image in the feature cache (float16).
"""

from __future__ import annotations

import torch
from torch import nn

from image_classification.errors import ParameterError
from image_classification.patches import grid_of, patch_blocks

FINE_STRIDES = (4, 8)  # the fine patch vectors' maps, on the last one's grid


def tap_blocks(backbone: nn.Sequential, input_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The blocks a pass keeps for patch vectors (:data:`STRIDES`) and for fine ones (:data:`FINE_STRIDES`)."""
    return patch_blocks(backbone, input_size), patch_blocks(backbone, input_size, FINE_STRIDES)


def fine_patch_features(maps: list[torch.Tensor], dtype: torch.dtype = torch.float16,
                        halvings: tuple[int, ...] | None = None) -> torch.Tensor:
    """(N, side², C) fine patch vectors from the stride-4 and stride-8 maps [(N, C_i, H_i, W_i), ...]
    of :data:`FINE_STRIDES`: each map on the last one's grid (a finer one averaged over 2 x 2 blocks,
    the border's own pixels only, ``halvings[i]`` times: :func:`fine_halvings` of their sides), not
    smoothed, concatenated along channels."""
    halvings = halvings if halvings is not None else fine_halvings([m.shape[-1] for m in maps])
    parts = []
    for feature_map, times in zip(maps, halvings):
        feature_map = feature_map.float()
        for _ in range(times):
            feature_map = nn.functional.avg_pool2d(feature_map, 2, ceil_mode=True, count_include_pad=False)
        parts.append(feature_map)
    return torch.cat(parts, dim=1).flatten(2).transpose(1, 2).to(dtype).contiguous()


def fine_halvings(sides: list[int]) -> tuple[int, ...]:
    """How many 2 x 2 averagings bring each map of these sides onto the last one's grid."""
    found = []
    for side in sides:
        times = 0
        while side > sides[-1]:
            side, times = -(-side // 2), times + 1
        if side != sides[-1]:
            raise ParameterError(f"the fine patch maps do not halve onto one grid (sides {sides})")
        found.append(times)
    return tuple(found)


def max_to_grid(values: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, grid²): (N, side²) values on a finer square grid, each of ``grid`` x ``grid`` cells their maximum."""
    side = grid_of(values)
    if side == grid:
        return values
    return nn.functional.adaptive_max_pool2d(values.reshape(-1, 1, side, side), grid).flatten(1)
