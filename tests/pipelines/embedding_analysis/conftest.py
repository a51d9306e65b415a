"""A tiny untrained checkpoint, a feature cache aligned with a tiny image index, and generated tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from image_classification.artefacts import Checkpoint
from image_classification.operating_point import OperatingPoint
from image_classification.model import build_model
from image_classification.pipelines.score.nodes import score_index

from .generated import embeddings_table

HEAD = {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}


@pytest.fixture(scope="session")
def tiny_checkpoint() -> dict:
    """Random weights, frozen backbone: scored from the feature cache, like a real frozen-backbone run."""
    torch.manual_seed(0)
    model = build_model(weights="none")
    return Checkpoint.from_model(model, backbone="efficientnet_lite0", weights="none", head=HEAD).to_payload()


@pytest.fixture
def tiny_index() -> pd.DataFrame:
    """14 train, 6 val and 4 test images (half valid) and 4 unseen-kind images."""
    splits = ["train"] * 14 + ["val"] * 6 + ["test"] * 4
    labels = ["valid", "invalid"] * 12
    rows = [{"path": f"/img/{label}_{i:02d}.png", "label": label, "kind": label, "split": split}
            for i, (label, split) in enumerate(zip(labels, splits))]
    rows += [{"path": f"/img/digit_{i}.png", "label": None, "kind": "digit", "split": "unseen"} for i in range(4)]
    index = pd.DataFrame(rows).astype({"path": "string", "label": "string", "kind": "string", "split": "string"})
    index["sha256"] = [f"{i:064x}" for i in range(len(index))]
    index["target"] = index["label"].map({"valid": 1, "invalid": 0}).astype("Int8")
    return index


@pytest.fixture
def tiny_features(tiny_index) -> dict:
    """A feature cache for ``tiny_index`` whose classes differ, and one unreadable training image."""
    generator = torch.Generator().manual_seed(1)
    n = len(tiny_index)
    head_input = torch.rand(n, 1280, 4, 4, generator=generator)
    head_input[torch.as_tensor((tiny_index["label"] == "valid").fillna(False).to_numpy(dtype=bool))] += 1.0
    errors = [""] * n
    errors[2] = "truncated image"
    return {
        "tensors": {"head_input": head_input.half(), "pooled": torch.rand(n, 1280, generator=generator).half()},
        "metadata": {"backbone": "efficientnet_lite0", "head_input": "pooled", "weights": "none", "paths": tiny_index["path"].tolist(),
                     "sha256": tiny_index["sha256"].tolist(), "errors": errors},
    }


@pytest.fixture(scope="session")
def small_embeddings() -> pd.DataFrame:
    """400 generated embeddings: valid dense, invalid spread out, unseen and unreadable rows."""
    return embeddings_table(400, seed=3)


@pytest.fixture
def tiny_scores(tiny_checkpoint, tiny_features, tiny_index) -> dict:
    """The score stage's output for ``tiny_index``."""
    return score_index(tiny_checkpoint, tiny_features, tiny_index, {"device": "cpu", "threads": None})


@pytest.fixture
def tiny_operating_point(tiny_checkpoint) -> dict:
    """A threshold chosen for ``tiny_checkpoint``, away from 0.5 so that it is not the argmax."""
    return OperatingPoint.for_checkpoint({"threshold": 0.47, "rule": "point"},
                                         Checkpoint.from_payload(tiny_checkpoint)).to_payload()
