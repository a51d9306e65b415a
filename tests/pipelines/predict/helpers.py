"""Test inputs of predict and export: a tiny untrained model, real photos, a folder of every kind of file."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from image_classification.artefacts import Checkpoint
from image_classification.detectors import DetectorState, KNNDetector
from image_classification.scorers.baseline import BaselineWeights
from image_classification.model import build_model

from ...conftest import BAD_FILES, jpeg_bytes, noise_image, png_bytes, write_files

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def tiny_checkpoint(seed: int = 0) -> dict:
    """An untrained classifier as train saves it (weights="none": nothing is downloaded).

    Its batch-norm statistics are measured on one batch of noise, so activations keep their
    scale through the backbone and the outputs vary from image to image, as a trained model's do.
    """
    checkpoint = _tiny_checkpoint(seed)
    return {"tensors": dict(checkpoint["tensors"]), "metadata": dict(checkpoint["metadata"])}


@functools.cache
def _tiny_checkpoint(seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(weights="none")
    for layer in model.backbone.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a plain average over the batches seen
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.rand(4, 3, 96, 96) * 2 - 1)
    model.eval()
    metadata = {"backbone": "efficientnet_lite0", "weights": "none", "input_size": 224, "fine_tuned_blocks": 0,
                "best_epoch": 3, "seed": 42, "class_names": ["invalid", "valid"],
                "head": {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}}
    return Checkpoint.from_model(model, **metadata).to_payload()


def knn_detector_payload(threshold: float = 0.5, seed: int = 0) -> dict:
    """A kNN detector on pooled features, as zero_shot saves it."""
    reference = np.random.default_rng(seed).random((12, 1280))
    detector = KNNDetector(k=2).fit(reference, np.zeros(12))
    return DetectorState.of(detector, "knn_pooled", "pooled", threshold, target_tpr=0.95).to_payload()


def baseline_payload(seed: int = 0) -> dict:
    """A logistic regression on the tiny model's 1280 pooled features, as evaluate saves it."""
    rng = np.random.default_rng(seed)
    weights = BaselineWeights(mean=rng.random(1280) * 0.1, scale=1 + rng.random(1280), coef=rng.normal(0, 0.05, 1280),
                              intercept=0.2, c=1.0, backbone="efficientnet_lite0")
    return weights.to_payload()


def photo_files() -> dict[str, bytes]:
    """Real photos bundled with scikit-image: colour JPEGs, a large one, and a grey PNG."""
    files = {}
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)())
        files[f"{name}.png" if image.mode == "L" else f"{name}.jpg"] = (
            png_bytes(image) if image.mode == "L" else jpeg_bytes(image, quality=90))
    return files


def make_mixed_folder(folder: Path) -> Path:
    """Photos, grey, RGBA and CMYK images, corrupt files and a text file, some in subfolders."""
    write_files(folder, photo_files())
    write_files(folder / "batch_2", {
        "grey.png": png_bytes(noise_image(31, (64, 48), mode="L")),
        "rgba.png": png_bytes(noise_image(32, (64, 48), mode="RGBA")),
        "cmyk.jpg": jpeg_bytes(noise_image(33, (64, 48)).convert("CMYK")),
        "notes.txt": b"not an image",
    })
    write_files(folder / "broken", {name: BAD_FILES[name]() for name in
                                    ("zero_bytes.jpg", "truncated.jpg", "random_bytes.png", "page.jpg")})
    return folder


MIXED_ERRORS = {"batch_2/notes.txt", "broken/zero_bytes.jpg", "broken/truncated.jpg", "broken/random_bytes.png",
                "broken/page.jpg"}
MIXED_FILES = 5 + 4 + 4
