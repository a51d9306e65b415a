"""The score stage: one pass over the index, from the feature cache or from the files, the same
numbers either way, and a cache that belongs to something else refused with the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from image_classification.artefacts import Checkpoint, ScoredIndex
from image_classification.errors import DataError, ParameterError
from image_classification.model import build_model
from image_classification.parameters.shared import ModelConfig
from image_classification.pipelines.score.nodes import score_index
from image_classification.pipelines.train.nodes import extract_features

from ...conftest import noise_image, png_bytes, write_files

BACKBONE = "efficientnet_lite0"
HEAD = {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}
RUNTIME = {"device": "cpu", "threads": 1, "batch_size": 4, "workers": 0}
SEED = 42


@pytest.fixture
def indexed_images(tmp_path) -> pd.DataFrame:
    """Four tiny PNGs and one unreadable file, as data_prep's image index lists them."""
    files = {f"image_{i}.png": png_bytes(noise_image(100 + i, size=(32, 32))) for i in range(4)}
    files["broken.png"] = b"\x89PNG\r\n\x1a\n not really a png"
    paths = write_files(tmp_path / "images", files)
    return pd.DataFrame({
        "path": [str(p) for p in paths],
        "split": ["train", "val", "test", "test", "test"],
        "label": ["valid", "invalid", "valid", "invalid", "valid"],
        "kind": ["valid", "invalid", "valid", "invalid", "valid"],
        "target": pd.array([1, 0, 1, 0, 1], dtype="Int8"),
        "sha256": [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths],
    })


def checkpoint_for(fine_tuned_blocks: int = 0) -> Checkpoint:
    """A checkpoint whose backbone is the one train's extract_features builds from ``SEED``."""
    torch.manual_seed(SEED)
    return Checkpoint.from_model(build_model(BACKBONE, weights="none").eval(), backbone=BACKBONE, head=HEAD,
                                 weights="none", fine_tuned_blocks=fine_tuned_blocks)


def test_scores_from_the_cache_equal_scores_from_the_files(indexed_images, caplog):
    cache = extract_features(indexed_images, ModelConfig(BACKBONE, weights="none"), RUNTIME, SEED)
    with caplog.at_level("INFO"):
        from_cache = ScoredIndex.from_payload(score_index(checkpoint_for(0).to_payload(), cache, indexed_images, RUNTIME))
    assert from_cache.source == "feature_cache" and "feature cache" in caplog.text
    # a fine-tuned backbone has no cache: the whole model runs over the files instead
    from_files = ScoredIndex.from_payload(score_index(checkpoint_for(1).to_payload(), cache, indexed_images, RUNTIME))
    assert from_files.source == "images"

    for scored in (from_cache, from_files):
        assert scored.sha256 == indexed_images["sha256"].tolist()
        assert [bool(e) for e in scored.errors] == [False] * 4 + [True]  # broken.png: no score, a reason
        assert np.isnan(scored.score[4]) and (0 <= scored.score[:4]).all() and (scored.score[:4] <= 1).all()
    assert from_cache.embedding.shape == (5, 50) and from_cache.pooled.shape == (5, 1280)
    scale = float(np.abs(from_files.embedding).max())
    np.testing.assert_allclose(from_cache.embedding[:4], from_files.embedding[:4], rtol=2e-3, atol=1e-3 * max(scale, 1))
    np.testing.assert_allclose(from_cache.score[:4], from_files.score[:4], atol=1e-3)
    np.testing.assert_allclose(from_cache.pooled[:4].float(), from_files.pooled[:4].float(), rtol=2e-3, atol=2e-3)


def test_a_cache_of_other_images_or_weights_stops_the_stage_and_says_to_rerun_train(indexed_images):
    cache = extract_features(indexed_images, ModelConfig(BACKBONE, weights="none"), RUNTIME, SEED)
    other_index = indexed_images.assign(sha256=indexed_images["sha256"].str[::-1])
    with pytest.raises(DataError, match="kedro run --pipelines train"):
        score_index(checkpoint_for(0).to_payload(), cache, other_index, RUNTIME)
    torch.manual_seed(SEED + 1)  # same backbone name, other weights
    other_weights = Checkpoint.from_model(build_model(BACKBONE, weights="none").eval(), backbone=BACKBONE, head=HEAD,
                                          weights="none")
    with pytest.raises(DataError, match="other weights"):
        score_index(other_weights.to_payload(), cache, indexed_images, RUNTIME)


def test_a_fine_tuned_model_scores_through_onnx_runtime_as_it_would_in_pytorch(indexed_images, caplog):
    checkpoint = checkpoint_for(1).to_payload()
    with caplog.at_level("INFO"):
        fast = ScoredIndex.from_payload(score_index(checkpoint, {}, indexed_images, RUNTIME | {"backend": "auto"}))
    assert "Scored the images with onnxruntime" in caplog.text
    eager = ScoredIndex.from_payload(score_index(checkpoint, {}, indexed_images, RUNTIME | {"backend": "torch"}))
    assert fast.errors == eager.errors and np.isnan(fast.score[4])
    np.testing.assert_allclose(fast.score[:4], eager.score[:4], atol=1e-4)
    scale = float(np.abs(eager.embedding).max())
    np.testing.assert_allclose(fast.embedding[:4], eager.embedding[:4], atol=1e-4 * max(scale, 1))
    with pytest.raises(ParameterError, match="runtime.parity_tolerance"):
        score_index(checkpoint, {}, indexed_images, RUNTIME | {"backend": "onnxruntime", "parity_tolerance": 0.0})
