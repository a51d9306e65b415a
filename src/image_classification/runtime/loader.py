"""Image files decoded and preprocessed for a backbone, in batches, with unreadable files reported."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Dataset

from image_classification.backbones import BackboneSpec
from image_classification.images import load_rgb
from image_classification.image_files import CHANGED_SINCE_INDEXED, ImageLimits, ImageReadError
from image_classification.model import preprocess_transform

logger = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """Images by path, decoded (JPEGs in draft mode) and preprocessed for a backbone.

    An image that cannot be read yields a zero tensor and its reason instead of an exception,
    so one bad file never stops a run over thousands. With ``sha256`` (the image index's), a file
    whose bytes changed since data_prep is such an image too.
    """

    def __init__(self, paths: list[str], spec: BackboneSpec, augment: str = "none",
                 limits: ImageLimits | None = None, sha256: list[str] | None = None) -> None:
        self.paths = list(paths)
        self.spec = spec
        self.transform = preprocess_transform(spec, augment)
        self.limits = limits or ImageLimits(min_side=1)
        self.sha256 = list(sha256) if sha256 is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            image = load_rgb(self.paths[index], self.limits, draft_size=self.spec.input_size,
                             sha256=self.sha256[index], keep_gray=True)
            return self.transform(image), ""
        except ImageReadError as error:
            size = self.spec.input_size
            return torch.zeros(3, size, size), str(error) or "unreadable"


def image_loader(paths: list[str], spec: BackboneSpec, batch_size: int, workers: int, augment: str = "none",
                 limits: ImageLimits | None = None, sha256: list[str] | None = None) -> DataLoader:
    """Batches of preprocessed images in the given order; ``workers`` processes decode while the
    model computes."""
    return DataLoader(ImageFiles(paths, spec, augment, limits=limits, sha256=sha256), batch_size=batch_size,
                      shuffle=False, num_workers=workers)


def log_unreadable(paths: list[str], errors: list[str], what: str) -> None:
    """Name the files a pass skipped, and say to rerun data_prep when some changed since it indexed them."""
    skipped = [(path, error) for path, error in zip(paths, errors) if error]
    if not skipped:
        return
    logger.warning("%d of %d images could not be read for %s", len(skipped), len(errors), what)
    for path, error in skipped[:20]:
        logger.warning("Skipping %s: %s", path, error)
    changed = sum(1 for _, error in skipped if error == CHANGED_SINCE_INDEXED)
    if changed:
        logger.warning("%d images changed since data_prep indexed them and were skipped; rerun data_prep "
                       "(`kedro run --pipelines data_prep`) and then this stage to use them", changed)
