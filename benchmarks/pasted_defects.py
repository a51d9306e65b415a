"""Synthetic local defects pasted into good solar-cell EL images, with the mask of what changed.

What a pasted defect looks like: one dark mark, drawn hard-edged into a grayscale (H, W) uint8 image,
every pixel under it multiplied by one factor between ``1 - DEPTH[1]`` and ``1 - DEPTH[0]`` (30 to 65 %
of its brightness remains), as a crack or an inactive speck shows up dark under electroluminescence:

- ``crack``: a straight line 1 to 3 px wide, 30 to 120 px long, at any angle;
- ``spot``: a filled ellipse of radii 2 to 5 px;
- ``scratch``: a thin polyline (1 or 2 px wide) of 2 to 4 segments of 10 to 30 px, each turning up to 60
  degrees from the one before.

It lies wholly inside the image, at least ``margin`` px from every border (a cell's frame is dark
already). The mask is exactly the pixels whose value changed (a pixel already too dark to darken is
left out of it). Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the
same defect, another seed another one. Shared code, not a benchmark: benchmarks take these names from
:mod:`benchmarks.harness`, which imports this module on first use; benchmarks/defect_maps.py measures
defect maps against them (docs/decisions/0033).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("crack", "spot", "scratch")
DEPTH = (0.35, 0.70)  # the share of brightness a defect takes away, drawn uniformly per defect
MARGIN = 16


def paste_defect(image: np.ndarray, seed: int, kind: str | None = None, margin: int = MARGIN
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """A copy of the (H, W) uint8 ``image`` with one dark defect of ``kind`` (one of :data:`KINDS`, or
    drawn from the seed when None) pasted in, the (H, W) bool mask of the pixels it changed, and the kind."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"paste_defect takes a grayscale (H, W) uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape
    if min(height, width) <= 2 * margin + 12:
        raise ValueError(f"a {width}x{height} image leaves no room for a defect {margin} px from its borders")
    rng = np.random.default_rng(seed)
    kind = kind if kind is not None else KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"a pasted defect is one of {', '.join(KINDS)}, not {kind!r}")
    box = (margin, margin, width - 1 - margin, height - 1 - margin)  # left, top, right, bottom (inclusive)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "crack":
        start = _inside(rng, box)
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(30, 120)
        end = _clip_ray(start, angle, length, box)
        draw.line([start, end], fill=255, width=int(rng.integers(1, 4)))
    elif kind == "spot":
        x, y = _inside(rng, (box[0] + 5, box[1] + 5, box[2] - 5, box[3] - 5))
        rx, ry = rng.uniform(2, 5, size=2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
    else:
        points = [_inside(rng, box)]
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(2, 5))):
            angle += rng.uniform(-math.pi / 3, math.pi / 3)
            points.append(_clip_ray(points[-1], angle, rng.uniform(10, 30), box))
        draw.line(points, fill=255, width=int(rng.integers(1, 3)), joint="curve")
    drawn = np.asarray(canvas) > 0
    factor = 1.0 - rng.uniform(*DEPTH)
    pasted = image.copy()
    pasted[drawn] = np.floor(image[drawn] * factor).astype(np.uint8)
    return pasted, pasted != image, kind


def _inside(rng: np.random.Generator, box: tuple[int, int, int, int]) -> tuple[float, float]:
    return float(rng.uniform(box[0], box[2])), float(rng.uniform(box[1], box[3]))


def _clip_ray(start: tuple[float, float], angle: float, length: float, box: tuple[int, int, int, int]
              ) -> tuple[float, float]:
    """The end of a segment from ``start`` at ``angle``, ``length`` long or shorter so that it stays in ``box``."""
    dx, dy = math.cos(angle), math.sin(angle)
    room = length
    for position, step, low, high in ((start[0], dx, box[0], box[2]), (start[1], dy, box[1], box[3])):
        if step > 1e-9:
            room = min(room, (high - position) / step)
        elif step < -1e-9:
            room = min(room, (low - position) / step)
    room = max(room, 0.0)
    return start[0] + dx * room, start[1] + dy * room
