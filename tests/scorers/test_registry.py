"""Every registered scorer goes through the same checks (as timm tests every registered model): fitted
on a split by the one path evaluate and the cross-validation use, its scores rank a separable set,
and a servable one saved as JSON and read back scores exactly as fitted, through the operating point."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from image_classification.artefacts import Checkpoint
from image_classification.operating_point import OperatingPoint
from image_classification.defect_maps import top_k_mean
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.train import TrainConfig
from image_classification.scorers import (
    SCORERS,
    Features,
    Labelled,
    Scorer,
    ServedScore,
    Split,
    probability_logit,
    register,
)
from image_classification.selection.cross_validation import build_fold_stack, cross_validate

# the fold stack with all three inputs (the patch Gaussian's is an option), so every input's map is checked
CONFIG = EvaluateConfig(patch_classifier_epochs=5, patch_classifier_hidden=8, patch_classifier_top_k=1,
                        bootstrap_samples=10, cv_folds=3, fold_stack_patch_gaussian=True)
CHECKPOINT = Checkpoint.from_payload({"tensors": {}, "metadata": {
    "backbone": "efficientnet_lite0", "weights": "imagenet", "input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
    "head": {"in_channels": 16}, "class_names": ["invalid", "valid"], "best_epoch": 1, "fine_tuned_blocks": 0,
    "seed": 42, "epochs_run": 1}})


def synthetic(images: int, seed: int) -> tuple[Features, np.ndarray, np.ndarray]:
    """Images of two labels: an invalid one has one odd patch (and one odd fine patch inside it) and a
    shifted pooled feature; two per group."""
    generator = torch.Generator().manual_seed(seed)
    targets = np.arange(images) % 2
    patches = torch.randn(images, 4, 8, generator=generator)
    patches[targets == 0, 0, :] += 4.0
    pooled = np.random.default_rng(seed).normal(size=(images, 8))
    pooled[targets == 0, 0] += 3.0
    head_input = torch.randn(images, 16, 4, 4, generator=generator)
    head_input[targets == 0, 0] += 3.0
    fine = torch.randn(images, 16, 8, generator=torch.Generator().manual_seed(seed + 1000))  # a 4 x 4 fine grid
    fine[targets == 0, 5, :] += 4.0  # row 1, column 1: inside patch 0 of the 2 x 2 grid
    return (Features(head_input=head_input, pooled=pooled, patches=patches, fine_patches=fine), targets,
            np.arange(images) // 2)


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


def test_every_registered_scorer_has_its_own_colour_and_marker_in_the_evaluation_figures():
    from image_classification.plots.style import PLOTLY_MARKERS, SERIES_COLOURS, SERIES_MARKERS

    assert min(len(SERIES_COLOURS), len(SERIES_MARKERS), len(PLOTLY_MARKERS)) >= len(SCORERS)
    assert len(set(SERIES_COLOURS)) == len(SERIES_COLOURS)


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_registered_scorer_fits_ranks_and_round_trips(scored, name):
    kind, result, split = SCORERS[name], scored["results"][name], scored["split"]
    assert issubclass(kind, Scorer) and kind.column.endswith("score") and kind.label and kind.description
    assert result.available, result.record
    assert result.val.shape == (len(split.val.targets),) and result.test.shape == (len(split.test.patches),)
    assert np.isfinite(result.test).all() and np.isfinite(result.val).all()
    assert roc_auc_score(scored["test_targets"], result.test) > 0.8  # higher means more like valid
    json.dumps(result.record, allow_nan=False)
    if kind.locates:  # its map is served beside the served score: its payload round-trips to the same map
        payload = json.loads(json.dumps(result.fitted.to_payload()))
        np.testing.assert_allclose(kind.from_payload(payload).defect_map(split.test),
                                   result.fitted.defect_map(split.test), rtol=1e-5, atol=1e-6)
    if not kind.servable:
        assert (result.fitted is None) is not kind.locates
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


@pytest.mark.parametrize("name", [name for name, kind in SCORERS.items() if "patches" in kind.reads])
def test_every_patch_scorer_draws_a_map_that_points_at_the_defect_and_agrees_with_its_score(scored, name):
    """An invalid image's one odd patch (patch 0) is where its map peaks; the map is in the scorer's
    documented units, so that its top-k mean says what the image's score says."""
    kind, result, split = SCORERS[name], scored["results"][name], scored["split"]
    fitted = result.fitted or kind.fit(split, CONFIG, seed=42)
    maps = fitted.defect_map(split.test)
    assert maps.shape == (len(split.test.patches), 4) and maps.dtype == np.float32 and fitted.map_units
    invalid = scored["test_targets"] == 0
    assert (maps[invalid].argmax(1) == 0).mean() > 0.9
    if name == "patch":  # distances: the top-k mean is the anomaly score, the negated patch score
        np.testing.assert_allclose(top_k_mean(maps, fitted.memory.top_k), -fitted.score_samples(split.test), rtol=1e-5)
    elif name == "patch_classifier" and len(fitted.ensemble.members) == 1:
        np.testing.assert_allclose(top_k_mean(maps, fitted.ensemble.members[0].top_k),
                                   -probability_logit(fitted.score_samples(split.test)), rtol=1e-4, atol=1e-4)
    elif name == "patch_gaussian":  # log-odds of distances: the highest is the anomaly score on that scale
        np.testing.assert_allclose(maps.max(1), fitted.log_odds(-fitted.score_samples(split.test)), rtol=1e-5,
                                   atol=1e-5)
        # the scale: the valid training patches' 1-in-1000 distance is drawn at 0, their median at -ln(999)
        assert fitted.log_odds(np.array([fitted.rare, fitted.median])) == pytest.approx([0.0, -np.log(999)], abs=1e-5)
    elif name == "fold_stack":  # per fold, each local map says what the stacker's local input says, negated;
        # the drawn map is their mix in the stacker's weights
        member = fitted.stack.members[0]
        assert fitted.stack.inputs == ("baseline", "patch_classifier", "patch_gaussian")
        inputs = member.inputs(split.test.pooled, split.test.patches)
        classifier, gaussian = member.local_maps(split.test.patches)
        np.testing.assert_allclose(top_k_mean(classifier.numpy(), member.classifier.top_k), -inputs[:, 1],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gaussian.numpy().max(1), -inputs[:, 2], rtol=1e-4, atol=1e-4)
        single = type(fitted.stack)(members=[member], stacker=fitted.stack.stacker, gate=None, grid=2)
        weights = fitted.stack.local_weights()
        assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
        np.testing.assert_allclose(single.patch_map(split.test.patches),
                                   weights[0] * classifier.numpy() + weights[1] * gaussian.numpy(), rtol=1e-5, atol=1e-5)
    else:  # the served ensemble: the members' mean map ranks images as the score does
        assert roc_auc_score(scored["test_targets"], -top_k_mean(maps, 1)) > 0.8


@pytest.mark.parametrize("name", [name for name, kind in SCORERS.items() if kind.servable])
def test_the_served_score_draws_its_map_or_says_it_draws_none(scored, name):
    result, split = scored["results"][name], scored["split"]
    point = OperatingPoint.for_checkpoint({"threshold": 0.5}, CHECKPOINT, name, result.fitted.to_payload() or None)
    served = ServedScore.of(json.loads(json.dumps(point.to_payload())))
    model = np.array(split.test.scores["model"], dtype=float)
    model[0] = np.nan
    maps = served.defect_maps(model, split.test.patches, split.test.fine_patches)
    if "patches" not in SCORERS[name].reads:
        assert maps is None and served.map_units == ""
        return
    assert np.isnan(maps[0]).all() and np.isfinite(maps[1:]).all() and served.map_units
    np.testing.assert_allclose(maps[1:], result.fitted.defect_map(split.test.take(np.arange(1, len(model)))),
                               rtol=1e-5, atol=1e-6)


def test_a_served_score_that_reads_no_patches_is_explained_by_a_patch_scores_map(scored):
    """The model or the baseline served: the operating point carries the fitted patch classifier, whose
    map (labelled as its own) shows where a defect may be; the served score and threshold are unchanged."""
    from image_classification.selection.operating_point import explaining_map

    results, split = scored["results"], scored["split"]
    weights = {name: results[name].fitted.to_payload() or None for name, kind in SCORERS.items() if kind.servable}
    assert explaining_map("patch_classifier", weights) is None
    assert explaining_map("model", {"model": None}) is None  # nothing fitted that reads patches
    explainer = explaining_map("baseline", weights)
    assert explainer["candidate"] == "patch_classifier"
    point = OperatingPoint.for_checkpoint({"threshold": 0.5}, CHECKPOINT, "baseline", weights["baseline"], explainer)
    served = ServedScore.of(json.loads(json.dumps(point.to_payload())))
    assert served.patch_grid == 0 and served.pass_grid == served.map_grid == 2
    assert served.map_source == "patch_classifier (explains the baseline, which reads no patches)"
    model = np.array(split.test.scores["model"], dtype=float)
    np.testing.assert_allclose(served.scores(model, split.test.pooled, None), results["baseline"].test, rtol=1e-5)
    np.testing.assert_allclose(served.defect_maps(model, split.test.patches, split.test.fine_patches),
                               results["patch_classifier"].fitted.defect_map(split.test), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="draws its map on a 2x2 patch grid"):
        served.defect_maps(model, split.test.patches[:, :1], split.test.fine_patches)


@pytest.mark.parametrize("served_name", ["fold_stack", "baseline"])
def test_the_locating_map_is_served_beside_the_served_score_and_labelled(scored, served_name):
    """evaluate.defect_map_from=patch_gaussian: the operating point carries the fitted patch Gaussian, whose
    map (labelled as its own) is drawn whatever the served score; the served score and threshold are
    unchanged, and served (the other value) keeps the served score's own map."""
    from image_classification.selection.operating_point import defect_map_beside

    results, split = scored["results"], scored["split"]
    locating = {"patch_gaussian": results["patch_gaussian"].fitted.to_payload()}
    assert defect_map_beside("served", locating) is None
    assert defect_map_beside("patch_gaussian", {}) is None  # not fitted: the served score draws its own
    beside = defect_map_beside("patch_gaussian", locating)
    point = OperatingPoint.for_checkpoint({"threshold": 0.5}, CHECKPOINT, served_name,
                                          results[served_name].fitted.to_payload(), beside)
    served = ServedScore.of(json.loads(json.dumps(point.to_payload())))
    model = np.array(split.test.scores["model"], dtype=float)
    patches = split.test.patches if "patches" in SCORERS[served_name].reads else None
    np.testing.assert_allclose(served.scores(model, split.test.pooled, patches), results[served_name].test,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served.defect_maps(model, split.test.patches, split.test.fine_patches),
                               results["patch_gaussian"].fitted.defect_map(split.test), rtol=1e-5, atol=1e-6)
    assert served.map_units == results["patch_gaussian"].fitted.map_units and served.map_grid == 2
    # the pass outputs fine patch vectors for this map only, and only when maps are drawn
    assert served.pass_fine() and not served.pass_fine(maps=False)
    assert not ServedScore.of(OperatingPoint.for_checkpoint({"threshold": 0.5}, CHECKPOINT, served_name,
                                                            results[served_name].fitted.to_payload())).pass_fine()
    what = "locates defects beside the" if served.patch_grid else "explains the"
    assert served.map_source.startswith(f"patch_gaussian ({what} {served_name}")
    invalid = scored["test_targets"] == 0
    assert (served.defect_maps(model, split.test.patches, split.test.fine_patches)[invalid].argmax(1) == 0).mean() > 0.9


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


def test_the_fold_stack_stacks_the_patch_gaussian_only_when_asked(caplog):
    features, targets, groups = synthetic(48, seed=3)
    for option, inputs in ((False, ("baseline", "patch_classifier")),
                           (True, ("baseline", "patch_classifier", "patch_gaussian"))):
        config = EvaluateConfig(patch_classifier_epochs=3, patch_classifier_hidden=8, patch_classifier_top_k=1,
                                bootstrap_samples=10, cv_folds=3, fold_stack_patch_gaussian=option)
        report = cross_validate(features, targets, groups, 3, TrainConfig(epochs=2), config, seed=42,
                                backbone="efficientnet_lite0", grid=2)
        assert "patch_gaussian" in report["out_of_fold"]  # measured either way
        stack, _ = build_fold_stack(report["out_of_fold"], targets, report["fold_fits"], features.patches, seed=42)
        assert stack.inputs == inputs
    # asked for, but one fold fitted no patch Gaussian: two inputs, and the log says why
    report["fold_fits"]["patch_gaussian"].pop()
    with caplog.at_level(logging.WARNING, logger="image_classification.selection.cross_validation"):
        stack, _ = build_fold_stack(report["out_of_fold"], targets, report["fold_fits"], features.patches, seed=42)
    assert stack.inputs == ("baseline", "patch_classifier")
    assert "1 of 3 folds fitted no patch Gaussian" in caplog.text
