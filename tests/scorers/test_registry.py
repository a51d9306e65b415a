"""Every registered scorer goes through the same checks (as timm tests every registered model): fitted
on a split by the one path evaluate and the cross-validation use, its scores rank a separable set,
and a servable one saved as JSON and read back scores exactly as fitted, through the operating point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from image_classification.artefacts import Checkpoint, OperatingPoint
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.train import TrainConfig
from image_classification.scorers import SCORERS, Features, Labelled, Scorer, ServedScore, Split, register
from image_classification.selection.cross_validation import build_fold_stack, cross_validate

CONFIG = EvaluateConfig(patch_classifier_epochs=5, patch_classifier_hidden=8, patch_classifier_top_k=1,
                        bootstrap_samples=10, cv_folds=3)
CHECKPOINT = Checkpoint.from_payload({"tensors": {}, "metadata": {
    "backbone": "efficientnet_lite0", "weights": "imagenet", "input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
    "head": {"in_channels": 16}, "class_names": ["invalid", "valid"], "best_epoch": 1, "fine_tuned_blocks": 0,
    "seed": 42, "epochs_run": 1}})


def synthetic(images: int, seed: int) -> tuple[Features, np.ndarray, np.ndarray]:
    """Images of two labels: an invalid one has one odd patch and a shifted pooled feature; two per group."""
    generator = torch.Generator().manual_seed(seed)
    targets = np.arange(images) % 2
    patches = torch.randn(images, 4, 8, generator=generator)
    patches[targets == 0, 0, :] += 4.0
    pooled = np.random.default_rng(seed).normal(size=(images, 8))
    pooled[targets == 0, 0] += 3.0
    head_input = torch.randn(images, 16, 4, 4, generator=generator)
    head_input[targets == 0, 0] += 3.0
    return Features(head_input=head_input, pooled=pooled, patches=patches), targets, np.arange(images) // 2


@pytest.fixture(scope="module")
def scored() -> dict:
    """Every registered scorer on one split, in registry order, as evaluate runs them; on small data,
    after the cross-validation of the train and validation images (whose fits two of them reuse)."""
    features, targets, groups = synthetic(96, seed=0)
    train, val, test = np.arange(0, 48), np.arange(48, 72), np.arange(72, 96)
    labelled = np.concatenate([train, val])
    report = cross_validate(features.take(labelled), targets[labelled], groups[labelled], 3, TrainConfig(epochs=2),
                            CONFIG, seed=42, backbone="efficientnet_lite0", grid=2)
    held_out, fits = report["out_of_fold"], report["fold_fits"]
    stack, held_out["fold_stack"] = build_fold_stack(held_out, targets[labelled], fits, features.patches[labelled],
                                                     seed=42)
    fold_fits = {"patch_classifier": {"grid": 2, "members": [fit.to_payload() for fit in fits["patch_classifier"]]},
                 "fold_stack": stack.to_payload()}
    # the checkpoint's scores come with the features in evaluate: here those of a head fitted on the split
    split = Split(train=Labelled(features.take(train), targets[train], groups[train]),
                  val=Labelled(features.take(val), targets[val], groups[val]), test=features.take(test),
                  backbone="efficientnet_lite0", grid=2, train_config=TrainConfig(epochs=2), fold_fits=fold_fits,
                  out_of_fold={name: scores[len(train):] for name, scores in held_out.items() if name != "fold"})
    results = {}
    for name, kind in SCORERS.items():
        results[name] = kind.on_split(split, CONFIG, seed=42)
        split = split.with_scores(name, results[name].val, results[name].test)
    return {"results": results, "split": split, "test_targets": targets[test]}


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_registered_scorer_fits_ranks_and_round_trips(scored, name):
    kind, result, split = SCORERS[name], scored["results"][name], scored["split"]
    assert issubclass(kind, Scorer) and kind.column.endswith("score") and kind.label and kind.description
    assert result.available, result.record
    assert result.val.shape == (len(split.val.targets),) and result.test.shape == (len(split.test.patches),)
    assert np.isfinite(result.test).all() and np.isfinite(result.val).all()
    assert roc_auc_score(scored["test_targets"], result.test) > 0.8  # higher means more like valid
    json.dumps(result.record, allow_nan=False)
    if not kind.servable:
        assert result.fitted is None
        return
    payload = json.loads(json.dumps(result.fitted.to_payload()))
    assert kind.from_payload(payload).patch_grid == result.fitted.patch_grid
    point = OperatingPoint.for_checkpoint({"threshold": 0.5}, CHECKPOINT, name, payload or None)
    served = ServedScore.of(json.loads(json.dumps(point.to_payload())))
    model = np.array(split.test.scores["model"], dtype=float)
    model[0] = np.nan  # an unreadable image has no served score
    scores = served.scores(model, split.test.pooled, split.test.patches)
    assert np.isnan(scores[0])
    np.testing.assert_allclose(scores[1:], result.test[1:], rtol=1e-5, atol=1e-6)


def test_a_new_score_is_one_module_that_registers_itself():
    """Registered, a scorer is cross-validated, measured and its column written with no other change."""
    @register
    class PooledMean(Scorer):
        name, column, label = "pooled_mean", "pooled_mean_score", "pooled mean"
        description, reads = "minus the first pooled feature", ("pooled",)

        @classmethod
        def fit(cls, split, config, seed):
            return cls()

        def score_samples(self, features):
            return -features.pooled[:, 0]

    try:
        features, targets, groups = synthetic(48, seed=1)
        report = cross_validate(features, targets, groups, 3, TrainConfig(epochs=1),
                                EvaluateConfig(patch_evidence=False, bootstrap_samples=10), seed=42)
        assert all("pooled_mean" in fold["candidates"] for fold in report["folds"])
        assert report["summary"]["pooled_mean"]["test_auroc"]["mean"] > 0.9
        assert report["out_of_fold"]["pooled_mean"].shape == (48,)
    finally:
        SCORERS.pop("pooled_mean")
