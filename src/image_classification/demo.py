"""The built-in demo data set, made from real images that installed packages bundle.

- ``labelled/valid``: face crops and ``labelled/invalid``: non-face crops (scikit-image's ``lfw_subset``,
  100 of each, 25x25 grey photos), with what real labelled data holds, so that the first run shows what
  each figure is for: 8 faces blurred and faded to the edge of recognition (``hard_blurred_face_*``, still
  valid), and 4 images of each class filed under the other (``mislabelled_face_*`` among the invalid,
  ``mislabelled_nonface_*`` among the valid). They bend the precision-recall curve, fill the error
  gallery (whose file names say what went wrong) and overlap in the embedding plots.
- ``unseen/texture``: patches of scikit-image's brick, grass and gravel photos.
- ``unseen/digit``: scikit-learn's 8x8 handwritten digits, enlarged to 32x32.
- ``unseen/photo``: crops of scikit-image's colour photos (coffee, cat, astronaut, rocket).

Everything is deterministic, so every machine builds byte-identical files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

DEMO_VERSION = "2"  # 2: hard and mislabelled images among the labelled ones
_MARKER = ".demo_version"
_PATCH = 64
_PER_TEXTURE = 20
_DIGITS = 60
_PER_PHOTO = 10


_HARD_FACES = range(85, 93)  # blurred and faded: still faces, hard to tell
_MISLABELLED = range(93, 97)  # of each class, filed under the other


def _faded(pixels: np.ndarray) -> np.ndarray:
    """A face blurred (sigma 1.5 px of 25) and faded to a third of its contrast: still a face, but a hard one."""
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(pixels, sigma=1.5)
    return blurred.mean() + (blurred - blurred.mean()) / 3.0


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


def _random_patches(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    height, width = image.shape[:2]
    tops = rng.integers(0, height - _PATCH, size=count)
    lefts = rng.integers(0, width - _PATCH, size=count)
    return [image[t : t + _PATCH, l : l + _PATCH] for t, l in zip(tops, lefts)]


def _demo_images() -> dict[str, Image.Image]:
    """Every demo image keyed by its path relative to the demo root."""
    from skimage import data
    from sklearn.datasets import load_digits

    images: dict[str, Image.Image] = {}
    faces = data.lfw_subset()  # 100 faces, then 100 non-faces
    for index, pixels in enumerate(faces[:100]):
        if index in _HARD_FACES:
            images[f"labelled/valid/hard_blurred_face_{index:03d}.png"] = Image.fromarray(_to_uint8(_faded(pixels)))
        elif index in _MISLABELLED:
            images[f"labelled/invalid/mislabelled_face_{index:03d}.png"] = Image.fromarray(_to_uint8(pixels))
        else:
            images[f"labelled/valid/face_{index:03d}.png"] = Image.fromarray(_to_uint8(pixels))
    for index, pixels in enumerate(faces[100:]):
        folder, name = ("valid", "mislabelled_nonface") if index in _MISLABELLED else ("invalid", "nonface")
        images[f"labelled/{folder}/{name}_{index:03d}.png"] = Image.fromarray(_to_uint8(pixels))

    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        for index, patch in enumerate(_random_patches(getattr(data, name)(), _PER_TEXTURE, rng)):
            images[f"unseen/texture/{name}_{index:02d}.png"] = Image.fromarray(patch)
    digits = load_digits()
    for index in range(_DIGITS):
        pixels = (digits.images[index] / 16.0 * 255.0).astype(np.uint8)
        image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST)
        images[f"unseen/digit/digit_{index:03d}_{digits.target[index]}.png"] = image
    for name in ("coffee", "chelsea", "astronaut", "rocket"):
        for index, patch in enumerate(_random_patches(getattr(data, name)(), _PER_PHOTO, rng)):
            images[f"unseen/photo/{name}_{index:02d}.png"] = Image.fromarray(patch)
    return images


class DemoFolder:
    """Where the demo lives, built there only when something reads it.

    Calling it builds the demo (once) and returns its folder; ``holds`` tells whether a path a
    source names lies inside the demo, e.g. ``data/01_raw/demo/unseen`` for its far unseen kinds.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __call__(self) -> str:
        return str(ensure_demo(self.path).resolve())

    def holds(self, location: str) -> bool:
        if "://" in location:
            return False
        return Path(location).resolve().is_relative_to(self.path.resolve())

    def __repr__(self) -> str:
        return f"DemoFolder('{self.path}')"


def ensure_demo(root: str | os.PathLike) -> Path:
    """Build the demo under ``root`` unless this version of it is already there.

    The files are written to a temporary folder first and moved into place in one step, so an
    interrupted build never leaves a half-written demo that later runs would mistake for whole.
    """
    root = Path(root)
    marker = root / _MARKER
    if marker.is_file() and marker.read_text().strip() == DEMO_VERSION:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        for relative, image in _demo_images().items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, format="PNG")
        (staging / _MARKER).write_text(DEMO_VERSION + "\n")
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built the demo data set under %s", root)
    return root
