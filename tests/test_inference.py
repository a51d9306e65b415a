"""Tests for inference.py and what the feature cache relies on: the head reads only a corner of the
map, its patch-GEMM first layer is the convolution, a checkpoint rebuilds the same model, and
scoring from the cache equals scoring from the image files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from image_classification.datasets import SafetensorsDataset
from image_classification.inference import extract_backbone_features, model_outputs, score_index
from image_classification.model import (
    ClassifierHead,
    backbone_spec,
    build_model,
    checkpoint_payload,
    model_from_checkpoint,
)

from .conftest import noise_image, png_bytes, write_files

BACKBONE = "efficientnet_lite0"
HEAD = {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}
RUNTIME = {"device": "cpu", "threads": None, "batch_size": 4, "workers": 0}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded weights; one thread is faster than two spin-waiting on CPUs shared with other work."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the head


def test_input_extent():
    assert ClassifierHead.input_extent(7) == 4
    assert ClassifierHead.input_extent(4) == 4
    assert ClassifierHead.input_extent(5) == 4
    assert ClassifierHead.input_extent(8) == 8


def test_the_head_reads_only_the_corner_the_cache_keeps():
    head = ClassifierHead().eval()
    feature_map = torch.randn(3, 1280, 7, 7)
    corner = feature_map[..., :4, :4]
    with torch.inference_mode():
        full_embedding, full_logits = head.embed_and_classify(feature_map)
        corner_embedding, corner_logits = head.embed_and_classify(corner)
        changed = feature_map.clone()
        changed[..., 4:, :] = 1e3  # the rows and columns outside the corner do not matter
        changed[..., :, 4:] = -1e3
        changed_logits = head(changed)
    torch.testing.assert_close(corner_embedding, full_embedding, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(corner_logits, full_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed_logits, full_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [7, 4])
def test_the_patch_gemm_forward_is_the_plain_sequential(size):
    head = ClassifierHead().eval()
    features = torch.randn(5, 1280, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(head(features), head.layers(features), rtol=0, atol=1e-5)
        torch.testing.assert_close(head.embed(features), head.layers[:-1](features), rtol=0, atol=1e-5)


def test_the_patch_gemm_gives_the_convolutions_gradient():
    head = ClassifierHead().eval()
    features = torch.randn(4, 1280, 4, 4)
    head(features).sum().backward()
    patch_gradient = head.layers[0].weight.grad.clone()
    head.zero_grad()
    head.layers(features).sum().backward()
    torch.testing.assert_close(patch_gradient, head.layers[0].weight.grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    model = build_model(BACKBONE, weights="none").eval()
    metadata = {"backbone": BACKBONE, "head": HEAD, "class_names": ["invalid", "valid"], "best_epoch": 3}
    dataset = SafetensorsDataset(filepath=str(tmp_path / "model.safetensors"))
    dataset.save(checkpoint_payload(model, metadata))

    loaded = dataset.load()
    assert loaded["metadata"] == {**metadata, "head_input": "pooled"}  # how the head reads the map is recorded
    rebuilt = model_from_checkpoint(loaded)
    assert not rebuilt.training
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected, got = model.forward_all(images), rebuilt.forward_all(images)
    for key in ("features", "embedding", "logits"):
        assert torch.equal(got[key], expected[key]), key
    # the weights came from the file, not from a fresh random initialisation
    fresh = build_model(BACKBONE, weights="none").eval()
    with torch.inference_mode():
        assert not torch.equal(fresh(images), expected["logits"])


# ----------------------------------------------------------------------------- scoring


def test_model_outputs_leaves_the_models_parameters_as_they_were(tmp_path):
    # fit() scores the validation images through model_outputs between epochs, and fused Adam
    # pairs each moment with its parameter by memory order: a scoring pass that turned the
    # weights channels_last would silently scramble the head's optimiser state
    paths = write_files(tmp_path, {"a.png": png_bytes(noise_image(1))})
    model = build_model(BACKBONE, weights="none")
    assert all(p.is_contiguous() for p in model.parameters())
    model_outputs(model, [str(p) for p in paths], backbone_spec(BACKBONE), torch.device("cpu"))
    assert [name for name, p in model.named_parameters() if not p.is_contiguous()] == []


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


def _feature_cache(model, index: pd.DataFrame) -> dict:
    """What the train pipeline's extract_features node stores, made with ``model``'s backbone."""
    features = extract_backbone_features(model.backbone, index["path"].tolist(), backbone_spec(BACKBONE),
                                         torch.device("cpu"), batch_size=4)
    return {"tensors": {"head_input": features["head_input"], "pooled": features["pooled"]},
            "metadata": {"backbone": BACKBONE, "head_input": "pooled", "weights": "none", "paths": index["path"].tolist(),
                         "sha256": index["sha256"].tolist(), "errors": features["errors"]}}


def test_score_index_from_the_cache_equals_scoring_the_files(indexed_images, caplog):
    model = build_model(BACKBONE, weights="none").eval()
    checkpoint = checkpoint_payload(model, {"backbone": BACKBONE, "head": HEAD, "fine_tuned_blocks": 0})
    cache = _feature_cache(model, indexed_images)
    assert cache["tensors"]["head_input"].shape == (5, 1280, 4, 4)
    assert cache["tensors"]["head_input"].dtype == torch.float16

    from_cache = score_index(checkpoint, cache, indexed_images, RUNTIME, with_pooled=True)
    assert "through the whole model" not in caplog.text
    # a fine-tuned backbone makes the cache unusable: the whole model runs over the files
    checkpoint["metadata"]["fine_tuned_blocks"] = 1
    with caplog.at_level("INFO", logger="image_classification.inference"):
        from_files = score_index(checkpoint, cache, indexed_images, RUNTIME, with_pooled=True)
    assert "through the whole model" in caplog.text

    assert len(from_cache) == len(indexed_images)
    assert from_cache.columns.tolist() == from_files.columns.tolist()
    assert from_cache.columns[:7].tolist() == ["path", "split", "label", "kind", "target", "score", "error"]
    assert sum(c.startswith("e") and c[1:].isdigit() for c in from_cache.columns) == 50
    assert sum(c.startswith("f") and c[1:].isdigit() for c in from_cache.columns) == 1280
    pd.testing.assert_frame_equal(from_cache.iloc[:, :5], indexed_images.iloc[:, :5])

    readable = from_cache["error"] == ""
    assert readable.tolist() == [True] * 4 + [False]
    numbers = [c for c in from_cache.columns if c[0] in "ef" and c[1:].isdigit()] + ["score"]
    cached, direct = from_cache.loc[readable, numbers].to_numpy(), from_files.loc[readable, numbers].to_numpy()
    scale = np.abs(direct).max()
    np.testing.assert_allclose(cached, direct, rtol=2e-3, atol=1e-3 * max(scale, 1.0))
    np.testing.assert_allclose(from_cache.loc[readable, "score"], from_files.loc[readable, "score"], atol=1e-3)


def test_an_unreadable_file_gets_no_score_and_a_reason(indexed_images):
    model = build_model(BACKBONE, weights="none").eval()
    checkpoint = checkpoint_payload(model, {"backbone": BACKBONE, "head": HEAD, "fine_tuned_blocks": 1})
    stale_cache = {"tensors": {}, "metadata": {"backbone": BACKBONE, "sha256": []}}
    scored = score_index(checkpoint, stale_cache, indexed_images, RUNTIME)
    broken = scored.iloc[-1]
    assert broken["path"].endswith("broken.png")
    assert np.isnan(broken["score"])
    assert broken["error"] != ""
    assert scored["score"].iloc[:4].between(0, 1).all()
    assert (scored["error"].iloc[:4] == "").all()


def test_head_input_corner_is_the_original_design_and_pooled_sees_the_whole_map():
    from image_classification.model import ImageClassifier, adapt_feature_map

    torch.manual_seed(0)
    head = ClassifierHead().eval()
    feature_map = torch.randn(3, 1280, 7, 7)
    with torch.no_grad():
        original = head.layers(feature_map)  # the plain layer stack on the raw 7x7 map
        corner = head(adapt_feature_map(feature_map, "corner"))
        pooled = head(adapt_feature_map(feature_map, "pooled"))
        changed = feature_map.clone()
        changed[..., 5:, 5:] += 10.0  # the bottom-right of the picture
        assert torch.allclose(corner, original, atol=1e-5)
        assert torch.equal(head(adapt_feature_map(changed, "corner")), corner)  # the original never sees it
        assert not torch.allclose(head(adapt_feature_map(changed, "pooled")), pooled)
    backbone = torch.nn.Sequential(torch.nn.Identity())
    for mode, expected in (("corner", corner), ("pooled", pooled)):
        with torch.no_grad():
            assert torch.allclose(ImageClassifier(backbone, head, head_input=mode).eval()(feature_map), expected, atol=1e-6)
    with pytest.raises(ValueError, match="head_input"):
        adapt_feature_map(feature_map, "center")
