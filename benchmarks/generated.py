"""Generated inputs the speed benchmarks share: camera-sized JPEG folders and a small predict model
(checkpoint, ONNX export, detector). Shared code, not a benchmark: benchmarks take these names from
:mod:`benchmarks.harness`, which imports this module on first use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

# --- generated images and a predict model ---------------------------------------------------------------------

def make_images(folder: Path, count: int, distinct: int, size: tuple[int, int] = (1280, 960)) -> None:
    """``count`` camera-like JPEGs in ``folder`` (kept between calls): ``distinct`` crops of scikit-image's
    photos with grain, quality 90, then hard links to them."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.immunohistochemistry(), skimage.data.hubble_deep_field()]
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"image_{index:06d}.jpg"
        if path.exists():
            continue
        if index >= distinct:
            os.link(folder / f"image_{index % distinct:06d}.jpg", path)
            continue
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        top, left = rng.integers(0, height // 4), rng.integers(0, width // 4)
        crop = Image.fromarray(photo[top : top + height * 3 // 4, left : left + width * 3 // 4])
        pixels = np.asarray(crop.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def image_folder(workdir: Path, count: int, distinct: int) -> Path:
    """A folder holding exactly ``count`` images (hard links into the shared pool of images)."""
    pool = workdir / "images"
    make_images(pool, count, distinct)
    folder = workdir / f"images_{count}"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        link = folder / f"image_{index:06d}.jpg"
        if not link.exists():
            os.link(pool / link.name, link)
    return folder


def prepare_predict_inputs(workdir: Path) -> float:
    """Write a checkpoint (efficientnet_lite0, ImageNet weights, an untrained head), its ONNX export and a
    kNN detector on 1,000 vectors to ``workdir``; return the export's seconds.

    Remade on every run, so an export never outlives a change to the model code.
    """
    from image_classification.detectors import DetectorState, KNNDetector
    from image_classification.artefacts import Checkpoint
    from image_classification.backbones import backbone_spec
    from image_classification.datasets import SafetensorsDataset
    from image_classification.model import build_model
    from image_classification.pipelines.predict.nodes import PredictConfig, export_onnx_model

    torch.manual_seed(0)
    spec = backbone_spec("efficientnet_lite0")
    metadata = {"backbone": spec.name, "weights": "imagenet", "input_size": spec.input_size, "fine_tuned_blocks": 0,
                "head": {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}}
    model = Checkpoint.from_model(build_model(), **metadata)
    checkpoint = model.to_payload()
    SafetensorsDataset(filepath=str(workdir / "checkpoint.safetensors")).save(checkpoint)
    reference = np.random.default_rng(0).random((1000, 1280))
    # bound to the checkpoint as zero_shot binds it, so predict checks it as it would a pipeline's
    state = DetectorState.of(KNNDetector(k=5).fit(reference, np.zeros(1000)), "knn_pooled", "pooled", 0.8,
                             checkpoint=model.fingerprint()).to_payload()
    SafetensorsDataset(filepath=str(workdir / "detector.safetensors")).save(state)
    started = time.perf_counter()
    (workdir / "model.onnx").write_bytes(export_onnx_model(checkpoint, {"threshold": 0.5}, PredictConfig()))
    return time.perf_counter() - started


def load_predict_inputs(workdir: Path) -> dict:
    """What :func:`prepare_predict_inputs` wrote, as predict's nodes take it."""
    from image_classification.datasets import SafetensorsDataset

    return {"model_checkpoint": SafetensorsDataset(filepath=str(workdir / "checkpoint.safetensors")).load(),
            "anomaly_detector": SafetensorsDataset(filepath=str(workdir / "detector.safetensors")).load(),
            "onnx_model": (workdir / "model.onnx").read_bytes(),
            "operating_point": {"threshold": 0.5, "backbone": "efficientnet_lite0"}}

