"""Tiny inputs of the evaluate pipeline: what data_prep and train would have written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from image_classification.artefacts import Checkpoint
from image_classification.model import build_model
from image_classification.pipelines.evaluate.nodes import EvaluateConfig
from image_classification.pipelines.score.nodes import score_index

from ...conftest import noise_image, png_bytes, write_files

SPLIT_SIZES = {"train": (8, 8), "val": (6, 6), "test": (5, 5)}  # (valid, invalid) per split
CHECKPOINT_METADATA = {
    "backbone": "efficientnet_lite0", "weights": "none", "input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
    "head": {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2},
    "class_names": ["invalid", "valid"], "best_epoch": 3, "fine_tuned_blocks": 0, "seed": 42, "epochs_run": 5,
}
UNREADABLE = 16  # a validation image (valid) that could not be read when features were extracted


def small_config(**changes) -> EvaluateConfig:
    """Parameters as in conf/base, with fewer bootstrap resamples to keep tests fast."""
    return EvaluateConfig(**{"bootstrap_samples": 200, "baseline_c_grid": (0.01, 1.0), "gallery_size": 3, **changes})


@pytest.fixture(scope="session")
def model_checkpoint() -> dict:
    """A checkpoint of an untrained model: random backbone and head, frozen as after training."""
    torch.manual_seed(0)
    return Checkpoint.from_model(build_model(weights="none"), **CHECKPOINT_METADATA).to_payload()


def make_image_index(folder: Path) -> pd.DataFrame:
    """Labelled images in every split, two unseen ones, written as tiny PNG files."""
    rows, seed = [], 100
    for split, (valid, invalid) in SPLIT_SIZES.items():
        for label, count in (("valid", valid), ("invalid", invalid)):
            for _ in range(count):
                seed += 1
                path = write_files(folder / split, {f"{label}_{seed}.png": png_bytes(noise_image(seed))})[0]
                rows.append({"path": str(path), "label": label, "kind": label, "split": split,
                             "target": int(label == "valid")})
    for kind in ("digit", "texture"):
        seed += 1
        path = write_files(folder / "unseen", {f"{kind}.png": png_bytes(noise_image(seed))})[0]
        rows.append({"path": str(path), "label": None, "kind": kind, "split": "unseen", "target": None})
    index = pd.DataFrame(rows).astype({"label": "string", "kind": "string", "split": "string", "target": "Int8"})
    # what data_prep records: train and score skip a file whose bytes no longer hash to it
    index["sha256"] = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in index["path"]]
    return index


def make_backbone_features(index: pd.DataFrame) -> dict:
    """Random features whose pooled part carries the label, so the baseline can learn it."""
    generator = torch.Generator().manual_seed(1)
    signal = torch.as_tensor(index["target"].fillna(0).to_numpy(dtype=np.float32))[:, None]
    pooled = torch.randn(len(index), 1280, generator=generator) + 1.5 * signal
    errors = ["" for _ in range(len(index))]
    errors[UNREADABLE] = "missing file: it no longer exists at this path"
    # patch vectors: every invalid image has one patch far from anything a valid image holds
    patches = torch.randn(len(index), 16, 8, generator=generator) * 0.1
    patches[:, 3] += 3.0 * (1 - signal)
    # fine patch vectors (an 8 x 8 grid): the same defect on one fine patch inside patch 3 (row 0, column 3)
    fine = torch.randn(len(index), 64, 8, generator=torch.Generator().manual_seed(2)) * 0.1
    fine[:, 7] += 3.0 * (1 - signal)
    return {
        "tensors": {"head_input": torch.randn(len(index), 1280, 4, 4, generator=generator).half(),
                    "pooled": pooled.half(), "patches": patches.half(), "fine_patches": fine.half()},
        "metadata": {"backbone": "efficientnet_lite0", "head_input": "pooled", "weights": "none", "paths": index["path"].tolist(),
                     "sha256": index["sha256"].tolist(), "errors": errors},
    }


@pytest.fixture
def evaluation_inputs(tmp_path, model_checkpoint) -> dict:
    """The datasets the evaluate pipeline reads, by catalog name."""
    index = make_image_index(tmp_path / "images")
    features = make_backbone_features(index)
    scored = score_index(model_checkpoint, features, index, {"device": "cpu", "threads": None})
    return {"image_index": index, "backbone_features": features, "model_checkpoint": model_checkpoint,
            "scored_index": scored}
