"""Typed artefacts: what each saves loads back the same, and a stale one is refused with the fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from image_classification.artefacts import Checkpoint, FeatureCache, ScoredIndex
from image_classification.operating_point import OperatingPoint
from image_classification.scorers import ServedScore
from image_classification.datasets import SafetensorsDataset
from image_classification.errors import DataError
from image_classification.model import build_model

BACKBONE = "efficientnet_lite0"
HEAD = {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint.from_model(build_model(BACKBONE, weights="none").eval(), backbone=BACKBONE, head=HEAD,
                                 weights="none", best_epoch=3, seed=42)


def index_of(count: int, salt: str = "") -> pd.DataFrame:
    return pd.DataFrame({"path": [f"/img/{i}.png" for i in range(count)], "split": ["train", "val", "test"][:1] * count,
                         "label": ["valid"] * count, "kind": ["valid"] * count,
                         "target": pd.array([1] * count, dtype="Int8"),
                         "sha256": [f"{i:063x}{salt or 0}" for i in range(count)]})


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path, checkpoint):
    dataset = SafetensorsDataset(filepath=str(tmp_path / "model.safetensors"))
    payload = checkpoint.to_payload()
    payload["metadata"]["written_by"] = "a later version"  # unknown keys survive a round trip
    dataset.save(payload)

    loaded = Checkpoint.from_payload(dataset.load())
    assert loaded.head_input == "pooled"  # how the head reads the map is always recorded
    assert (loaded.backbone, loaded.best_epoch, loaded.seed) == (BACKBONE, 3, 42)
    assert loaded.metadata["written_by"] == "a later version"
    assert loaded.fingerprint() == Checkpoint.from_payload(payload).fingerprint()
    rebuilt, original = loaded.model(), checkpoint.model()
    assert not rebuilt.training
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected, got = original.forward_all(images), rebuilt.forward_all(images)
        fresh = build_model(BACKBONE, weights="none").eval()(images)
    for key in ("features", "embedding", "logits"):
        assert torch.equal(got[key], expected[key]), key
    assert not torch.equal(fresh, expected["logits"])  # the weights came from the file


def test_old_checkpoints_without_head_input_read_the_corner(checkpoint):
    payload = checkpoint.to_payload()
    del payload["metadata"]["head_input"]
    assert Checkpoint.from_payload(payload).head_input == "corner"


def test_fingerprint_changes_with_any_weight(checkpoint):
    tensors = {name: tensor.clone() for name, tensor in checkpoint.tensors.items()}
    tensors["head.layers.9.bias"][0] += 1e-3
    changed = Checkpoint.from_payload({"tensors": tensors, "metadata": checkpoint.metadata})
    assert changed.fingerprint() != checkpoint.fingerprint()
    assert changed.backbone_sha256() == checkpoint.backbone_sha256()  # the backbone did not change


def feature_cache(index: pd.DataFrame, backbone_sha256: str | None = None) -> FeatureCache:
    n = len(index)
    return FeatureCache.of(head_input=torch.zeros(n, 1280, 4, 4, dtype=torch.float16),
                        pooled=torch.zeros(n, 1280, dtype=torch.float16), backbone=BACKBONE, weights="none",
                        head_input_mode="pooled", paths=index["path"].tolist(), sha256=index["sha256"].tolist(),
                        errors=[""] * (n - 1) + ["truncated"], backbone_sha256=backbone_sha256)


def test_feature_cache_round_trip_and_readable():
    cache = feature_cache(index_of(4), "abc")
    again = FeatureCache.from_payload(cache.to_payload())
    assert again.backbone_sha256 == "abc" and again.errors == cache.errors
    assert again.readable.tolist() == [True, True, True, False]


@pytest.mark.parametrize("change", ["index", "backbone", "head_input", "weights", "input_size"])
def test_a_stale_feature_cache_is_refused_and_says_to_rerun_train(change):
    index = index_of(4)
    cache = dataclasses.replace(feature_cache(index, "abc"), input_size=128)
    cache = FeatureCache.from_payload(cache.to_payload())
    arguments = {"image_index": index, "backbone": BACKBONE, "head_input_mode": "pooled", "backbone_sha256": "abc",
                 "input_size": 128}
    assert cache.check(**arguments) is cache
    arguments |= {"index": {"image_index": index_of(4, salt="f")}, "backbone": {"backbone": "mobilenet_v2"},
                  "head_input": {"head_input_mode": "corner"}, "weights": {"backbone_sha256": "xyz"},
                  "input_size": {"input_size": 224}}[change]
    with pytest.raises(DataError, match="kedro run --pipelines train") as refused:
        cache.check(**arguments)
    if change == "input_size":
        assert "input size 224 px, not 128" in str(refused.value)


def scored_index(index: pd.DataFrame, checkpoint: Checkpoint) -> ScoredIndex:
    n = len(index)
    score = np.linspace(0, 1, n, dtype=np.float32)
    score[-1] = np.nan
    return ScoredIndex(score=score, embedding=np.ones((n, 50), np.float32), pooled=torch.ones(n, 1280),
                       sha256=index["sha256"].tolist(), errors=[""] * (n - 1) + ["truncated"],
                       checkpoint=checkpoint.fingerprint(), source="feature_cache")


def test_scored_index_round_trip_and_table(checkpoint):
    index = index_of(5)
    scored = ScoredIndex.from_payload(scored_index(index, checkpoint).to_payload())
    table = scored.check(index, checkpoint).table(index)
    assert table.columns.tolist() == ["path", "split", "label", "kind", "target", "score", "error",
                                      *[f"e{i}" for i in range(50)]]
    assert np.isnan(table["score"].iloc[-1]) and table["error"].iloc[-1] == "truncated"
    assert scored.space("score").shape == (5, 1) and scored.space("pooled").dtype == np.float64


def test_scores_of_another_index_or_checkpoint_are_refused(checkpoint):
    index = index_of(5)
    scored = scored_index(index, checkpoint)
    with pytest.raises(DataError, match="another image index"):
        scored.check(index_of(5, salt="f"), checkpoint)
    tensors = {name: tensor.clone() for name, tensor in checkpoint.tensors.items()}
    tensors["head.layers.9.bias"][0] += 1.0
    retrained = Checkpoint.from_payload({"tensors": tensors, "metadata": checkpoint.metadata})
    with pytest.raises(DataError, match="kedro run --pipelines score"):
        scored.check(index, retrained)


def test_operating_point_belongs_to_its_checkpoint(checkpoint):
    choice = {"threshold": 0.7, "rule": "point", "reached": True, "validation": {"images": 10}}
    point = OperatingPoint.from_payload(OperatingPoint.for_checkpoint(choice, checkpoint).to_payload())
    assert point.threshold_for(checkpoint) == 0.7
    assert point.choice == {"rule": "point", "reached": True, "validation": {"images": 10}}
    other = Checkpoint.from_payload({"tensors": checkpoint.tensors, "metadata": {**checkpoint.metadata, "best_epoch": 9}})
    with pytest.raises(DataError, match="another checkpoint"):
        point.threshold_for(other)
    with pytest.raises(DataError, match="no threshold"):
        OperatingPoint.from_payload({"rule": "point"})
    # an operating point saved before candidates existed is the model's; one this version cannot serve is refused
    assert point.candidate == "model" and OperatingPoint.from_payload({"threshold": 0.5}).candidate == "model"
    weights = {"coef": [1.0], "mean": [0.0], "scale": [1.0], "intercept": 0.0, "C": 1.0, "backbone": "efficientnet_lite0"}
    baseline = OperatingPoint.from_payload(
        OperatingPoint.for_checkpoint(choice, checkpoint, "baseline", weights).to_payload())
    assert baseline.candidate == "baseline" and "candidate" not in baseline.choice and baseline.served_weights == weights
    # the served score is the baseline's of the pooled features; NaN where the image was unreadable
    np.testing.assert_allclose(ServedScore.of(baseline).scores(np.array([0.3, np.nan]), np.array([[2.0], [1.0]])),
                               [1 / (1 + np.exp(-2.0)), np.nan])
    with pytest.raises(DataError, match="serves the baseline but holds no served_weights"):
        OperatingPoint.from_payload({"threshold": 0.5, "candidate": "baseline"})
    with pytest.raises(DataError, match="candidate 'stack', which this version cannot serve"):
        ServedScore.of({"threshold": 0.5, "candidate": "stack", "served_weights": {"x": 1}})


def test_predicted_label_is_at_the_operating_threshold_and_na_when_unreadable(checkpoint):
    point = OperatingPoint.for_checkpoint({"threshold": 0.7}, checkpoint)
    labels = point.predicted_labels(np.array([0.69, 0.7, 0.95, np.nan]))
    assert labels.iloc[:3].tolist() == ["invalid", "valid", "valid"]
    assert labels.isna().tolist() == [False, False, False, True]
