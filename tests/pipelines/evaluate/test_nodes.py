"""Nodes of the evaluate pipeline on tiny in-memory data."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from image_classification.artefacts import FeatureCache
from image_classification.errors import DataError, ParameterError
from image_classification.metrics import bootstrap_precision_recall, metrics_at_threshold, select_threshold
from image_classification.parameters.train import TrainConfig
from image_classification.scorers import ServedScore
from image_classification.scorers.baseline import BaselineWeights
from image_classification.scorers.fold_stack import FoldStack
from image_classification.patches import PatchClassifier, PatchEnsemble
from image_classification.pipelines.evaluate.nodes import (
    EvaluateConfig,
    choose_operating_point,
    cross_validate_candidates,
    draw_error_gallery,
    list_errors,
    measure_performance,
    plot_confusion_matrices,
    plot_precision_recall,
    plot_roc,
    plot_score_histograms,
    score_candidates,
    score_images,
)

from ...conftest import noise_image, png_bytes, write_files
from .conftest import CHECKPOINT_METADATA, SPLIT_SIZES, UNREADABLE, small_config

CHECKPOINT = {"tensors": {}, "metadata": CHECKPOINT_METADATA}
BASELINE_FIT = {"description": "test", "C": 1.0, "train_images": 4, "c_grid": []}
PATCH_OFF = {"enabled": False, "reason": "evaluate.patch_evidence is off"}


def scores_table(val: tuple[list[int], list[float]], test: tuple[list[int], list[float]],
                 baseline_shift: float = 0.05) -> pd.DataFrame:
    """An ``evaluation_scores`` table from targets and scores per split."""
    frames = []
    for split, (targets, scores) in (("val", val), ("test", test)):
        frames.append(pd.DataFrame({
            "path": [f"/images/{split}_{i}.png" for i in range(len(targets))], "split": split,
            "label": ["valid" if t else "invalid" for t in targets], "target": np.array(targets, dtype=np.int8),
            "score": np.array(scores, dtype=np.float32), "error": "",
        }))
    table = pd.concat(frames, ignore_index=True)
    table["baseline_score"] = np.clip(table["score"] - baseline_shift, 0, 1).astype(np.float32)
    table["patch_score"] = table["stack_score"] = np.float32(np.nan)
    return table


# validation: a 0.9-precision threshold exists at 0.6 (9 valid of 10 called); test: one FP, one FN at 0.6
VAL = ([1] * 9 + [0] + [0] * 10, [0.95, 0.9, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.62] + [0.1] * 10)
TEST = ([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.65, 0.7, 0.3, 0.2, 0.1, 0.4, 0.05])


@pytest.fixture
def evaluation_scores() -> pd.DataFrame:
    return scores_table(VAL, TEST)


# ---------------------------------------------------------------- parameters


def test_config_accepts_the_yaml_shape_and_refuses_nonsense():
    config = EvaluateConfig(baseline_c_grid=[0.1, 1])
    assert config.baseline_c_grid == (0.1, 1.0)
    for bad in ({"target_precision": 0.0}, {"target_precision": 1.2}, {"rule": "f1"}, {"bound_method": "exact"},
                {"bound_level": 1.0}, {"bootstrap_samples": 0}, {"baseline_c_grid": []}, {"baseline_c_grid": [-1]},
                {"cv_folds": 1}, {"patch_coreset_fraction": 0}, {"patch_top_k": 0}):
        with pytest.raises(ValueError):
            EvaluateConfig(**bad)


# ---------------------------------------------------------------- metrics


def test_metrics_at_threshold_match_scikit_learn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 200)
    scores = np.round(np.clip(targets * 0.3 + rng.random(200) * 0.7, 0, 1), 2)  # rounded: ties at the threshold
    threshold = 0.5
    predicted = (scores >= threshold).astype(int)
    result = metrics_at_threshold(targets, scores, threshold)
    assert result["recall"] == pytest.approx(recall_score(targets, predicted))
    assert result["precision"] == pytest.approx(precision_score(targets, predicted))
    assert result["f1"] == pytest.approx(f1_score(targets, predicted))
    assert result["accuracy"] == pytest.approx(accuracy_score(targets, predicted))
    assert result["auroc"] == pytest.approx(roc_auc_score(targets, scores))
    assert result["average_precision"] == pytest.approx(average_precision_score(targets, scores))
    tn, fp, fn, tp = confusion_matrix(targets, predicted).ravel()
    assert [result[k] for k in ("true_negatives", "false_positives", "false_negatives", "true_positives")] == [tn, fp, fn, tp]


def test_metrics_of_one_class_are_undefined_not_wrong():
    result = metrics_at_threshold(np.zeros(5, int), np.linspace(0, 1, 5), 0.5)
    assert np.isnan(result["recall"]) and np.isnan(result["auroc"]) and np.isnan(result["average_precision"])
    assert result["precision"] == 0.0 and result["false_positives"] == 3


def test_bootstrap_resamples_agree_with_scikit_learn_and_repeat():
    rng = np.random.default_rng(1)
    targets, predicted = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    result = bootstrap_precision_recall(targets, predicted, samples=50, seed=7)
    assert result == bootstrap_precision_recall(targets, predicted, samples=50, seed=7)
    picks = np.random.default_rng(7).integers(0, 60, size=(50, 60))
    precision = [precision_score(targets[p], predicted[p]) for p in picks]
    recall = [recall_score(targets[p], predicted[p]) for p in picks]
    assert result["precision"] == pytest.approx(np.percentile(precision, [2.5, 97.5]).tolist())
    assert result["recall"] == pytest.approx(np.percentile(recall, [2.5, 97.5]).tolist())
    assert result["precision_resamples"] == result["recall_resamples"] == 50


def test_bootstrap_of_nothing_is_undefined():
    result = bootstrap_precision_recall(np.array([], int), np.array([], bool), samples=10)
    assert np.isnan(result["recall"]).all() and result["recall_resamples"] == 0


# ---------------------------------------------------------------- scores


def score_all(inputs: dict, config, held_out: pd.DataFrame | None = None, fold_models: dict | None = None,
              features: dict | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """evaluate's scoring of every candidate, as the pipeline runs it."""
    model = score_images(inputs["scored_index"], inputs["model_checkpoint"], inputs["image_index"])
    return score_candidates(model, features or inputs["backbone_features"], inputs["image_index"], config, 42,
                            held_out, fold_models)


def test_scores_cover_validation_and_test_only(evaluation_inputs):
    index, features = evaluation_inputs["image_index"], evaluation_inputs["backbone_features"]
    table, fits, models = score_all(evaluation_inputs, small_config())
    sizes = {split: sum(counts) for split, counts in SPLIT_SIZES.items()}
    assert table["split"].value_counts().to_dict() == {"val": sizes["val"], "test": sizes["test"]}
    unreadable = index["path"].iloc[UNREADABLE]
    for column in ("score", "baseline_score", "patch_score", "patch_classifier_score", "stack_score"):
        assert table.loc[table[column].isna(), "path"].tolist() == [unreadable], column
    assert table["fold_stack_score"].isna().all() and not fits["fold_stack"]["enabled"]  # no cross-validation given
    assert table["score"].dropna().between(0, 1).all() and table["baseline_score"].dropna().between(0, 1).all()
    fitted = fits["baseline"]
    assert fitted["C"] in (0.01, 1.0) and fitted["train_images"] == sum(SPLIT_SIZES["train"])
    # the saved weights, read back from JSON, score as the fitted baseline did (what predict serves)
    served = BaselineWeights.from_payload(json.loads(json.dumps(models["baseline"])))
    pooled = features["tensors"]["pooled"].float().numpy()[index["split"].isin(["val", "test"]).to_numpy()]
    readable = table["baseline_score"].notna().to_numpy()
    assert served.c == fitted["C"] and np.allclose(served.score(pooled[readable]),
                                                   table.loc[readable, "baseline_score"], atol=1e-6)
    # the memory holds valid train images' patches only, so each invalid image's odd patch stands out
    assert fits["patch"]["enabled"] and fits["patch"]["train_valid_images"] == SPLIT_SIZES["train"][0]
    readable = table.dropna(subset=["patch_score"])
    assert readable.loc[readable["target"] == 1, "patch_score"].min() > readable.loc[readable["target"] == 0, "patch_score"].max()
    assert roc_auc_score(readable["target"], readable["stack_score"]) > 0.9
    # the patch classifier learns the invalid train images' odd patch from their labels
    classifier = fits["patch_classifier"]
    assert classifier["enabled"] and classifier["train_images"] == sum(SPLIT_SIZES["train"])
    assert roc_auc_score(readable["target"], readable["patch_classifier_score"]) > 0.9
    # every fitted servable score, and the locating one whose map is served beside, as plain numbers
    assert set(models) == {"baseline", "patch_classifier", "patch_gaussian"}
    reordered = score_images(evaluation_inputs["scored_index"], evaluation_inputs["model_checkpoint"], index).iloc[::-1]
    with pytest.raises(ValueError, match="in order"):
        score_candidates(reordered, features, index, small_config(), 42)


def test_with_the_patch_classifier_off_the_memory_and_the_stack_still_score(evaluation_inputs):
    # with the served score's own map, the patch Gaussian is measured but its fit is not kept to serve
    table, fits, models = score_all(evaluation_inputs, small_config(patch_classifier=False, defect_map_from="served"))
    assert fits["patch"]["enabled"] and fits["patch_classifier"] == {"enabled": False,
                                                                     "reason": "evaluate.patch_classifier is off"}
    assert table["patch_classifier_score"].isna().all() and table["patch_score"].notna().sum() > 0
    assert "patch_classifier" not in models
    assert fits["patch_gaussian"]["enabled"] and table["patch_gaussian_score"].notna().sum() > 0
    assert "patch_gaussian" not in models
    assert table["stack_score"].notna().sum() == table["patch_score"].notna().sum()


@pytest.mark.parametrize("why", ["switched off", "no patches cached"])
def test_without_patch_evidence_its_scores_are_missing_and_the_report_says_why(evaluation_inputs, why):
    features = evaluation_inputs["backbone_features"]
    config = small_config(patch_evidence=why != "switched off")
    if why == "no patches cached":
        features = {**features, "tensors": {k: v for k, v in features["tensors"].items() if k != "patches"}}
    table, fits, _ = score_all(evaluation_inputs, config, features=features)
    assert table[["patch_score", "patch_classifier_score"]].isna().all(axis=None) and not fits["patch"]["enabled"]
    assert ("patch_evidence is off" if why == "switched off" else "train.patch_grid is 0") in fits["patch"]["reason"]
    assert table["stack_score"].isna().all()
    point = choose_operating_point(table, CHECKPOINT, config)
    metrics = measure_performance(table, point, fits, config, seed=42)
    assert [row["candidate"] for row in metrics["candidates"]["table"]] == ["model", "baseline"]
    assert metrics["patch"] == fits["patch"] and "test" not in metrics["stack"]
    json.dumps(metrics, allow_nan=False)


def test_cross_validation_measures_every_candidate_on_every_fold(evaluation_inputs):
    index, features = evaluation_inputs["image_index"], evaluation_inputs["backbone_features"]
    report, held_out, fold_models = cross_validate_candidates(features, index, TrainConfig(epochs=2),
                                                              small_config(cv_folds=3), seed=42)
    json.dumps(report, allow_nan=False)
    # the train and validation images only: the test split measures the choices made on these
    labelled = sum(SPLIT_SIZES["train"]) + sum(SPLIT_SIZES["val"]) - 1  # one image unreadable
    assert report["enabled"] and report["labelled_images"] == labelled and len(report["folds"]) == 3
    # every labelled image is held out exactly once, and never in its own fold's train or validation rows
    assert sum(fold["images"]["test"] for fold in report["folds"]) == labelled
    assert len(held_out) == labelled and set(held_out["split"]) == {"train", "val"}
    assert held_out["fold"].value_counts().sort_index().tolist() == [f["images"]["test"] for f in report["folds"]]
    scores = ["score", "baseline_score", "patch_score", "patch_classifier_score", "stack_score", "fold_stack_score"]
    assert held_out[scores].notna().all(axis=None)
    # each fold's held-out scores are the ones its figures were measured on
    first = held_out[held_out["fold"] == 0]
    assert roc_auc_score(first["target"], first["baseline_score"]) == pytest.approx(
        report["folds"][0]["candidates"]["baseline"]["test_auroc"])
    for fold in report["folds"]:
        assert sum(fold["images"].values()) == labelled
        assert list(fold["candidates"]) == ["model", "baseline", "patch", "patch_gaussian", "patch_classifier", "stack"]
    summary = report["summary"]
    # the patch vectors separate the labels (conftest), so patch evidence is perfect on every fold
    assert summary["patch"]["test_auroc"]["mean"] == pytest.approx(1.0) and summary["patch"]["folds"] == 3
    assert summary["baseline"]["test_auroc"]["sd"] is not None
    assert report["best_by_validation_average_precision"] in summary
    assert report["model"].startswith("the original head on the frozen backbone") and "fine-tuned" not in report["model"]
    # the patch classifier evaluate measures and may serve is then the mean of the fold fits: test images
    # scored by all of them, validation images by the fit that did not see them
    folds, stack = fold_models["patch_classifier"], fold_models["fold_stack"]
    assert len(folds["members"]) == 3 and folds["grid"] == 4  # 16 patches per image
    table, fits, models = score_all(evaluation_inputs, small_config(cv_folds=3), held_out, fold_models)
    assert models["patch_classifier"] == folds and fits["patch_classifier"]["fold_fits"] == 3
    val = table.query("split == 'val'").merge(held_out[["path", "patch_classifier_score", "fold_stack_score"]],
                                              on="path", suffixes=("", "_held_out"))
    assert len(val) and np.array_equal(val["patch_classifier_score"], val["patch_classifier_score_held_out"])
    test = table.query("split == 'test'")
    cache = FeatureCache.from_payload(features)
    rows = index.reset_index(drop=True).index[index["path"].isin(test["path"])].to_numpy()
    readable = cache.readable[rows]
    expected = PatchEnsemble.from_payload(folds).scores(cache.patches[rows[readable]])
    np.testing.assert_allclose(test["patch_classifier_score"].to_numpy()[readable], expected, atol=1e-7)
    # the fold stack of the same fits: validation images by their out-of-fold score, test images by the served stack
    assert len(stack["members"]) == 3 and report["fold_stack"]["fold_fits"] == 3 and models["fold_stack"] == stack
    assert np.array_equal(val["fold_stack_score"], val["fold_stack_score_held_out"])
    served = FoldStack.from_payload(json.loads(json.dumps(stack)))
    np.testing.assert_allclose(test["fold_stack_score"].to_numpy()[readable],
                               served.scores(cache.pooled[rows[readable]], cache.patches[rows[readable]]), atol=1e-6)


def test_the_patch_classifier_s_held_out_scores_come_from_a_fit_on_its_fold_s_train_and_validation_rows():
    """It chooses nothing on validation, so its out-of-fold scores (which choose the served candidate
    and its threshold) come from a fit on all the fold's other rows; its per-fold figures, like every
    candidate's, from the fit on the train rows, whose threshold validation chooses."""
    from image_classification.scorers import Features
    from image_classification.scorers.patch_classifier import fit_patch_classifier
    from image_classification.selection.cross_validation import cross_validate, grouped_folds

    generator = torch.Generator().manual_seed(0)
    targets, groups = np.array([1, 0] * 24), np.arange(48) // 2
    patches = torch.randn(48, 4, 6, generator=generator)
    patches[targets == 0, 0, 0] += 1.0
    config = small_config(cv_folds=3, patch_classifier_epochs=3)
    features = Features(head_input=torch.randn(48, 1280, 4, 4, generator=generator),
                        pooled=np.random.default_rng(0).normal(size=(48, 8)), patches=patches)
    report = cross_validate(features, targets, groups, 3, TrainConfig(epochs=1), config, seed=42, grid=2)
    rows = next(grouped_folds(targets, groups, 3, seed=42))
    fitted_on = np.concatenate([rows["train"], rows["val"]])
    first = fit_patch_classifier(patches[fitted_on], targets[fitted_on], config, 42)
    expected = first.scores(patches[rows["test"]])
    np.testing.assert_array_equal(report["out_of_fold"]["patch_classifier"][rows["test"]], expected)
    refits = report["fold_fits"]["patch_classifier"]
    assert len(refits) == 3  # the fold fits, which evaluate serves as their mean
    np.testing.assert_array_equal(refits[0].score_samples(Features(patches=patches)), first.scores(patches))
    train_only = fit_patch_classifier(patches[rows["train"]], targets[rows["train"]], config, 42).scores(
        patches[rows["test"]])
    assert not np.allclose(expected, train_only)
    assert report["folds"][0]["candidates"]["patch_classifier"]["test_auroc"] == pytest.approx(
        roc_auc_score(targets[rows["test"]], train_only))


def test_cross_validation_says_its_model_row_is_not_the_fine_tuned_model(evaluation_inputs):
    """With fine-tuned backbone blocks the folds still train the head on the frozen features: the
    report must not pass those figures off as the fine-tuned model's."""
    report, *_ = cross_validate_candidates(evaluation_inputs["backbone_features"], evaluation_inputs["image_index"],
                                           TrainConfig(epochs=1, trainable_blocks=1), small_config(cv_folds=3), seed=42)
    assert report["enabled"] and "not the model with 1 fine-tuned backbone blocks" in report["model"]


@pytest.mark.parametrize(("changes", "why"), [
    ({"cv_folds": 0}, "cv_folds is 0"),
    ({"cv_max_images": 20}, "one split is large enough"),
    ({"cv_folds": 20}, "fewer than 20 groups of each label"),
])
def test_cross_validation_is_skipped_with_a_reason(evaluation_inputs, changes, why):
    report, held_out, fold_models = cross_validate_candidates(evaluation_inputs["backbone_features"],
                                                              evaluation_inputs["image_index"], TrainConfig(epochs=1),
                                                              small_config(**changes), seed=42)
    assert not report["enabled"] and why in report["reason"] and held_out.empty and fold_models == {}
    assert list(held_out) == ["path", "split", "target", "fold", "score", "baseline_score", "patch_score",
                              "patch_gaussian_score", "patch_classifier_score", "stack_score", "fold_stack_score"]


def test_stale_features_or_scores_are_refused(evaluation_inputs):
    stale = evaluation_inputs["image_index"].assign(sha256=lambda t: t["sha256"].str.replace("0", "f"))
    with pytest.raises(ValueError, match="kedro run --pipelines train"):
        cross_validate_candidates(evaluation_inputs["backbone_features"], stale, TrainConfig(epochs=1), small_config(),
                                  seed=42)
    with pytest.raises(ValueError, match="kedro run --pipelines train,score"):
        score_images(evaluation_inputs["scored_index"], evaluation_inputs["model_checkpoint"], stale)


# ---------------------------------------------------------------- operating point


def test_operating_point_is_chosen_on_validation(evaluation_scores):
    point = choose_operating_point(evaluation_scores, CHECKPOINT, small_config(rule="point"))
    assert point["threshold"] == pytest.approx(0.6) and point["reached"] and point["fallback"] is None
    assert point["validation"]["precision"] == pytest.approx(0.9) and point["validation"]["recall"] == 1.0
    assert 0 < point["validation"]["precision_lower_bound"] < 0.9
    assert (point["backbone"], point["class_names"], point["best_epoch"]) == ("efficientnet_lite0", ["invalid", "valid"], 3)
    json.dumps(point, allow_nan=False)


def test_lower_bound_rule_on_a_small_validation_set_falls_back_and_explains(evaluation_scores):
    point = choose_operating_point(evaluation_scores, CHECKPOINT, small_config(rule="lower_bound"))
    assert not point["reached"] and point["rule"] == "lower_bound"
    assert "Fallback rule" in point["fallback"] and "too small to certify" in point["fallback"]
    # the highest bound is reached by the 8 valid images above the invalid one at 0.62
    assert point["threshold"] == pytest.approx(0.65) and point["validation"]["precision"] == 1.0


def held_out_table(targets: list[int], model: list[float], baseline: list[float]) -> pd.DataFrame:
    """An ``out_of_fold_scores`` table of two folds."""
    return pd.DataFrame({"path": [f"/images/oof_{i}.png" for i in range(len(targets))], "split": "train",
                         "target": np.array(targets, np.int8), "fold": np.arange(len(targets)) % 2,
                         "score": np.array(model, np.float32), "baseline_score": np.array(baseline, np.float32),
                         "patch_score": np.float32(np.nan), "stack_score": np.float32(np.nan)})


def per_fold_difference(held_out: pd.DataFrame) -> np.ndarray:
    """The model's held-out AP minus the baseline's, fold by fold, as scikit-learn computes them."""
    return np.array([average_precision_score(f["target"], f["score"]) - average_precision_score(f["target"],
                                                                                                 f["baseline_score"])
                     for _, f in held_out.groupby("fold")])


# the baseline's weights as evaluate saves them (the operating point carries them when it serves the baseline)
WEIGHTS = {"kind": "logistic regression on pooled backbone features", "backbone": "efficientnet_lite0", "C": 1.0,
           "features": 2, "mean": [0.0, 0.0], "scale": [1.0, 1.0], "coef": [1.0, -1.0], "intercept": 0.0}
# 30 held-out images: the baseline ranks them well (one invalid image among the top 20 valid ones)
OOF_TARGETS = [1] * 20 + [0] * 10
OOF_BASELINE = [0.99 - 0.01 * i for i in range(20)] + [0.985] + [0.1] * 9
# a model that ranks them perfectly, and a baseline with an invalid image near the top of each fold
OOF_PERFECT = [0.9 - 0.001 * i for i in range(20)] + [0.1] * 10
OOF_WORSE_BASELINE = [0.99 - 0.01 * i for i in range(20)] + [0.985, 0.975] + [0.1] * 8


def test_on_small_data_auto_serves_the_baseline_with_an_out_of_fold_threshold_and_says_how_the_model_compares(
        evaluation_scores, caplog):
    """Only the baseline's threshold carries over from out-of-fold scores, so on small data it is
    served; the record compares the model's held-out AP with it and the run warns when the model
    ranks clearly better (by more than two standard errors over the folds)."""
    held_out = held_out_table(OOF_TARGETS, [0.5] * 30, OOF_BASELINE)  # a model that ranks nothing
    config = small_config(rule="point")
    point = choose_operating_point(evaluation_scores, CHECKPOINT, config, held_out, scorer_models={"baseline": WEIGHTS})
    json.dumps(point, allow_nan=False)
    assert point["candidate"] == "baseline" and point["threshold_chosen_on"] == "out_of_fold"
    assert "on small data the one of the baseline and the patch classifier with the higher mean held-out" \
        in point["why"]
    assert "the patch classifier is not served because there are no patch_classifier scores" in point["why"]
    compared = point["candidates_compared"]["model_minus_baseline_held_out_average_precision"]
    assert compared["per_fold"] == pytest.approx(per_fold_difference(held_out).tolist()) and compared["mean"] < 0
    assert "ranks clearly better" not in point["why"] and "ranks clearly better" not in caplog.text
    expected = select_threshold(np.array(OOF_TARGETS), np.array(OOF_BASELINE, np.float32).astype(float), "point",
                                config.rule_settings)
    assert point["threshold"] == pytest.approx(expected["threshold"]) and point["validation"]["images"] == 30
    clearly = held_out_table(OOF_TARGETS, OOF_PERFECT, OOF_WORSE_BASELINE)
    difference = per_fold_difference(clearly)
    assert difference.mean() > 2 * difference.std(ddof=1) / np.sqrt(2)  # better in both folds, by about as much
    warned = choose_operating_point(evaluation_scores, CHECKPOINT, config, clearly, scorer_models={"baseline": WEIGHTS})
    assert warned["candidate"] == "baseline" and "evaluate.operating_candidate=model serves it" in warned["why"]
    assert "ranks clearly better" in caplog.text
    # pinned, the model keeps its validation threshold (its fold heads score on other scales)
    model_point = choose_operating_point(evaluation_scores, CHECKPOINT, small_config(rule="point",
                                         operating_candidate="model"), clearly, scorer_models={"baseline": WEIGHTS})
    assert model_point["candidate"] == "model" and model_point["threshold_chosen_on"] == "validation"
    assert model_point["threshold"] == pytest.approx(0.6)
    # everything measured and drawn follows the served candidate
    metrics = measure_performance(evaluation_scores, point, {"baseline": BASELINE_FIT, "patch": PATCH_OFF}, config, seed=42)
    assert metrics["operating_candidate"] == "baseline" and metrics["candidates"]["operating_point_from"] == "baseline"
    assert metrics["baseline"]["threshold"] == point["threshold"] and metrics["baseline"]["C"] == 1.0
    assert metrics["model"]["threshold"] == pytest.approx(0.6)  # chosen on validation beside it
    errors = list_errors(evaluation_scores, point)
    by_baseline = evaluation_scores["baseline_score"] >= point["threshold"]
    wrong = by_baseline != (evaluation_scores["target"] == 1)
    assert sorted(errors["path"]) == sorted(evaluation_scores.loc[wrong, "path"])
    assert np.allclose(errors.set_index("path").loc[evaluation_scores.loc[wrong, "path"], "score"],
                       evaluation_scores.loc[wrong, "baseline_score"])


def test_without_cross_validation_auto_compares_validation_average_precision_and_says_so(evaluation_scores):
    worse_baseline = evaluation_scores.assign(baseline_score=lambda t: np.where(t["target"] == 1, 0.4, 0.6) +
                                              np.linspace(0, 0.01, len(t)))
    point = choose_operating_point(worse_baseline, CHECKPOINT, small_config(rule="point"), pd.DataFrame(),
                                   scorer_models={"baseline": WEIGHTS})
    assert point["candidate"] == "model" and \
        "unless the baseline's or the patch classifier's validation average precision is clearly higher" in point["why"]
    low, high = point["candidates_compared"]["baseline_minus_model_validation_average_precision_interval"]
    assert low < high < 0
    # a baseline that ranks validation clearly better (a paired bootstrap interval above 0) is served
    better_baseline = evaluation_scores.assign(
        baseline_score=lambda t: t["target"] * 0.5 + np.linspace(0.2, 0.3, len(t)),
        score=lambda t: np.where(t["target"] == 1, 0.4, 0.6) + np.linspace(0, 0.01, len(t)))
    served = choose_operating_point(better_baseline, CHECKPOINT, small_config(rule="point"), pd.DataFrame(),
                                    scorer_models={"baseline": WEIGHTS})
    assert served["candidate"] == "baseline" and served["candidates_compared"][
        "baseline_minus_model_validation_average_precision_interval"][0] > 0
    # the operating point carries the weights it serves: predict and zero_shot need nothing else
    assert served["served_weights"] == WEIGHTS and "served_weights" not in point
    without = choose_operating_point(better_baseline, CHECKPOINT, small_config(rule="point"), pd.DataFrame())
    assert without["candidate"] == "model" and "no fitted baseline weights were given" in without["why"]
    # out_of_fold asked for without cross-validation: validation, and the record says why
    pinned = choose_operating_point(evaluation_scores, CHECKPOINT,
                                    small_config(rule="point", operating_candidate="baseline", threshold_on="out_of_fold"),
                                    pd.DataFrame(), scorer_models={"baseline": WEIGHTS})
    assert pinned["candidate"] == "baseline" and pinned["why"] == "pinned by evaluate.operating_candidate"
    assert pinned["threshold_chosen_on"] == "validation" and "cross-validation did not run" in pinned["threshold_note"]


def test_the_baseline_is_not_served_for_a_fine_tuned_backbone(evaluation_scores):
    fine_tuned = {"tensors": {}, "metadata": {**CHECKPOINT_METADATA, "fine_tuned_blocks": 2}}
    held_out = held_out_table(OOF_TARGETS, [0.5] * 30, OOF_BASELINE)
    point = choose_operating_point(evaluation_scores, fine_tuned, small_config(), held_out, scorer_models={"baseline": WEIGHTS})
    assert point["candidate"] == "model" and "2 fine-tuned blocks" in point["why"]
    with pytest.raises(ParameterError, match="fitted on the frozen backbone's features"):
        choose_operating_point(evaluation_scores, fine_tuned, small_config(operating_candidate="baseline"),
                               scorer_models={"baseline": WEIGHTS})
    with pytest.raises(ParameterError, match="patch and stack are measured, not served"):
        small_config(operating_candidate="stack")


def patch_classifier_payload(grid: int = 2) -> dict:
    """A small fitted patch classifier as evaluate saves it (scorer_models.json)."""
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(12, grid * grid, 3, generator=generator)
    return PatchClassifier.fit(patches, np.array([1, 0] * 6), epochs=2, hidden=4, top_k=2).to_payload(grid)


def test_on_small_data_auto_serves_the_patch_classifier_when_it_ranks_held_out_images_best(evaluation_scores):
    """The baseline and the patch classifier both take their thresholds from out-of-fold scores; the
    one of the higher mean held-out average precision is served, and the operating point carries
    its weights, so that predict, zero_shot and embedding_analysis score with it alone."""
    payload = patch_classifier_payload()
    scores = evaluation_scores.assign(patch_classifier_score=lambda t: t["score"] - 0.5)
    held_out = held_out_table(OOF_TARGETS, [0.5] * 30, OOF_WORSE_BASELINE).assign(
        patch_classifier_score=np.array(OOF_PERFECT, np.float32) - 0.5)
    config = small_config(rule="point")
    point = choose_operating_point(scores, CHECKPOINT, config, held_out, scorer_models={"baseline": WEIGHTS, "patch_classifier": payload})
    json.dumps(point, allow_nan=False)
    assert point["candidate"] == "patch_classifier" and point["threshold_chosen_on"] == "out_of_fold"
    assert point["served_weights"] == payload
    # the record says what the threshold was chosen on, in its own words too
    assert "out-of-fold precision" in point["rule_description"] and "validation" not in point["rule_description"]
    bounded = choose_operating_point(scores, CHECKPOINT, small_config(rule="lower_bound", out_of_fold_bound_level=0.95),
                                     held_out, scorer_models={"baseline": WEIGHTS, "patch_classifier": payload})
    assert "lower bound on out-of-fold precision" in bounded["fallback"]
    assert "20 valid out-of-fold images" in bounded["fallback"] and "the out-of-fold scores are too small" in \
        bounded["fallback"]
    compared = point["candidates_compared"]["held_out_average_precision"]
    assert compared["patch_classifier"]["mean"] == pytest.approx(1.0)
    assert compared["baseline"]["mean"] < 1.0
    expected = select_threshold(np.array(OOF_TARGETS), held_out["patch_classifier_score"].to_numpy(float), "point",
                                config.rule_settings)
    assert point["threshold"] == pytest.approx(expected["threshold"])
    served = ServedScore.of(point)
    patches = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1))
    model_scores = np.array([0.5, np.nan, 0.5, 0.5, 0.5])  # the second image could not be read
    want = PatchClassifier.from_payload(payload).scores(patches)
    got = served.scores(model_scores, None, patches)
    assert np.isnan(got[1]) and np.allclose(got[[0, 2, 3, 4]], want[[0, 2, 3, 4]], atol=1e-6)
    with pytest.raises(DataError, match="needs patch vectors"):
        served.scores(model_scores, np.zeros((5, 2)))
    with pytest.raises(DataError, match="reads a 2x2 patch grid"):
        served.scores(model_scores, None, torch.zeros(5, 9, 3))
    # measured on test at the served threshold, as every stage applies it
    metrics = measure_performance(scores, point, {"baseline": BASELINE_FIT, "patch": {"enabled": True},
                                                          "patch_classifier": {"enabled": True}},
                                  config, seed=42)
    assert metrics["operating_candidate"] == "patch_classifier"
    assert metrics["patch_classifier"]["threshold"] == point["threshold"]
    # a patch classifier that ranks held-out images worse than the baseline leaves the baseline served
    worse = held_out.assign(patch_classifier_score=np.float32(0.5))
    assert choose_operating_point(scores, CHECKPOINT, config, worse, scorer_models={"baseline": WEIGHTS, "patch_classifier": payload})["candidate"] == "baseline"
    # pinned, it needs its weights and a frozen backbone
    pinned = small_config(rule="point", operating_candidate="patch_classifier")
    with pytest.raises(ParameterError, match="no fitted patch_classifier weights were given"):
        choose_operating_point(scores, CHECKPOINT, pinned, held_out, scorer_models={"baseline": WEIGHTS})
    fine_tuned = {"tensors": {}, "metadata": {**CHECKPOINT_METADATA, "fine_tuned_blocks": 2}}
    with pytest.raises(ParameterError, match="fitted on the frozen backbone's features"):
        choose_operating_point(scores, fine_tuned, pinned, held_out, scorer_models={"patch_classifier": payload})


def test_without_cross_validation_auto_serves_the_patch_classifier_only_when_it_ranks_validation_clearly_better(
        evaluation_scores):
    """Large data (no out-of-fold scores): the patch classifier, like the baseline, replaces the model
    only when the paired bootstrap interval of its validation AP minus the model's lies above 0; of
    two that do, the one of higher validation AP is served, its threshold chosen on validation."""
    payload = patch_classifier_payload()
    weak_model = evaluation_scores.assign(score=lambda t: np.where(t["target"] == 1, 0.4, 0.6)
                                          + np.linspace(0, 0.01, len(t)))
    ranks_well = weak_model["target"] * 0.5 + np.linspace(0.2, 0.3, len(weak_model))
    config = small_config(rule="point")
    served = choose_operating_point(weak_model.assign(patch_classifier_score=ranks_well,
                                                      baseline_score=weak_model["score"] - 0.05),
                                    CHECKPOINT, config, pd.DataFrame(), scorer_models={"baseline": WEIGHTS, "patch_classifier": payload})
    compared = served["candidates_compared"]
    assert served["candidate"] == "patch_classifier" and served["served_weights"] == payload
    assert compared["patch_classifier_minus_model_validation_average_precision_interval"][0] > 0
    assert compared["baseline_minus_model_validation_average_precision_interval"][1] <= 0
    assert served["threshold_chosen_on"] == "validation" and "cross-validation did not run" in served["threshold_note"]
    val = weak_model["split"] == "val"
    expected = select_threshold(weak_model.loc[val, "target"].to_numpy(int), ranks_well[val].to_numpy(np.float64),
                                "point", config.rule_settings)
    assert served["threshold"] == pytest.approx(expected["threshold"])
    # both clearly better than the model: the one of higher validation average precision
    noisier = np.where(np.arange(len(weak_model)) % 7 == 0, 1 - ranks_well, ranks_well)
    both = choose_operating_point(weak_model.assign(patch_classifier_score=noisier, baseline_score=ranks_well),
                                  CHECKPOINT, config, pd.DataFrame(), scorer_models={"baseline": WEIGHTS, "patch_classifier": payload})
    assert all(both["candidates_compared"][f"{name}_minus_model_validation_average_precision_interval"][0] > 0
               for name in ("baseline", "patch_classifier"))
    assert both["candidates_compared"]["baseline"] > both["candidates_compared"]["patch_classifier"]
    assert both["candidate"] == "baseline"
    # a patch classifier no better than the model on validation leaves the model served
    tied = choose_operating_point(evaluation_scores.assign(patch_classifier_score=evaluation_scores["score"]),
                                  CHECKPOINT, config, pd.DataFrame(), scorer_models={"baseline": WEIGHTS, "patch_classifier": payload})
    assert tied["candidate"] == "model"
    assert tied["candidates_compared"]["patch_classifier_minus_model_validation_average_precision_interval"][0] <= 0


def test_unreachable_target_is_reported_not_hidden():
    scores = scores_table(([0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6]), TEST)
    for rule, says in (("point", "No threshold reaches precision 0.90"),
                       ("lower_bound", "No threshold's 95% wilson lower bound on validation precision reaches 0.90")):
        point = choose_operating_point(scores, CHECKPOINT, small_config(rule=rule))
        assert not point["reached"] and says in point["fallback"]
    metrics = measure_performance(scores, point, {"baseline": BASELINE_FIT, "patch": PATCH_OFF}, small_config(), seed=42)
    assert metrics["model"]["chosen_on_validation"]["reached"] is False
    assert metrics["model"]["chosen_on_validation"]["fallback"] == point["fallback"]


def test_a_validation_split_without_valid_images_stops_the_run():
    scores = scores_table(([0, 0, 0], [0.9, 0.5, 0.1]), TEST)
    with pytest.raises(ValueError, match="no readable valid image"):
        choose_operating_point(scores, CHECKPOINT, small_config())


def test_an_empty_test_split_stops_the_run():
    scores = scores_table(VAL, ([], []))
    point = choose_operating_point(scores, CHECKPOINT, small_config())
    with pytest.raises(ValueError, match="test split has no readable image"):
        measure_performance(scores, point, {"baseline": BASELINE_FIT, "patch": PATCH_OFF}, small_config(), seed=42)


# ---------------------------------------------------------------- test metrics


def test_test_metrics_use_the_validation_threshold_and_match_scikit_learn(evaluation_scores):
    point = choose_operating_point(evaluation_scores, CHECKPOINT, small_config(rule="point"))
    metrics = measure_performance(evaluation_scores, point, {"baseline": BASELINE_FIT, "patch": PATCH_OFF}, small_config(rule="point"), seed=42)
    json.dumps(metrics, allow_nan=False)
    targets, scores = np.array(TEST[0]), np.array(TEST[1], dtype=np.float32)
    predicted = scores >= np.float32(0.6)
    model = metrics["model"]
    assert model["threshold"] == point["threshold"]
    assert model["test"]["recall"] == pytest.approx(recall_score(targets, predicted)) == 0.8
    assert model["test"]["precision"] == pytest.approx(precision_score(targets, predicted)) == 0.8
    assert model["test"]["auroc"] == pytest.approx(roc_auc_score(targets, scores))
    assert model["test"]["target_precision_held"] is False
    low, high = model["test_bootstrap"]["precision"]
    assert low <= 0.8 <= high and model["test_bootstrap"]["samples"] == 200
    # the oracle picks its threshold on test: 0.9 precision only above the tie at 0.7, recall 2/5
    oracle = model["oracle_picked_on_test"]
    assert "ORACLE" in oracle["note"] and oracle["threshold"] == pytest.approx(0.8)
    assert oracle["recall_at_target_precision"] == pytest.approx(0.4)
    baseline = metrics["baseline"]
    assert baseline["C"] == 1.0 and baseline["threshold"] == pytest.approx(0.55, abs=1e-6)
    assert set(baseline["test"]) == set(model["test"])


def test_every_candidate_is_measured_at_its_own_validation_threshold_and_the_best_is_named(evaluation_scores):
    rng = np.random.default_rng(3)
    scores = evaluation_scores.assign(
        patch_score=np.where(evaluation_scores["target"] == 1, -0.1, -2.0) + rng.normal(0, 0.01, len(evaluation_scores)),
        stack_score=evaluation_scores["score"] * 0.5)
    point = choose_operating_point(scores, CHECKPOINT, small_config())
    patch_fit = {"enabled": True, "memory_patches": 10}
    metrics = measure_performance(scores, point, {"baseline": BASELINE_FIT, "patch": patch_fit}, small_config(), seed=42)
    json.dumps(metrics, allow_nan=False)
    table = {row["candidate"]: row for row in metrics["candidates"]["table"]}
    assert list(table) == ["model", "baseline", "patch", "stack"]
    # the patch score separates validation perfectly, so it has the best validation AP and recall 1 on test
    assert metrics["candidates"]["best_by_validation_average_precision"] == "patch"
    assert table["patch"]["val_average_precision"] == pytest.approx(1.0) and table["patch"]["test_recall"] == 1.0
    assert metrics["patch"]["memory_patches"] == 10 and metrics["patch"]["threshold"] < -0.1
    # the stacked column is half the model's score: the same ranking, a threshold half as high
    assert metrics["stack"]["threshold"] == pytest.approx(point["threshold"] / 2)
    assert table["stack"]["test_auroc"] == pytest.approx(table["model"]["test_auroc"])
    assert metrics["candidates"]["operating_point_from"] == "model"
    for interactive, _ in (plot_roc(scores, metrics), plot_precision_recall(scores, metrics)):
        assert {"model", "baseline (logistic regression)", "patch evidence", "stacked"} <= {t.name for t in interactive.data}


def test_a_test_split_of_one_class_gives_nulls_not_nan():
    scores = scores_table(VAL, ([0, 0, 0], [0.9, 0.2, 0.1]))
    point = choose_operating_point(scores, CHECKPOINT, small_config())
    metrics = measure_performance(scores, point, {"baseline": BASELINE_FIT, "patch": PATCH_OFF}, small_config(), seed=42)
    json.dumps(metrics, allow_nan=False)
    assert metrics["model"]["test"]["auroc"] is None and metrics["model"]["test"]["recall"] is None
    assert metrics["model"]["test_bootstrap"]["recall"] == [None, None]


# ---------------------------------------------------------------- gap analysis and figures


def test_gap_analysis_lists_every_error_most_wrong_first(evaluation_scores):
    gaps = list_errors(evaluation_scores, {"threshold": 0.6})
    assert gaps[["split", "error", "score"]].values.tolist() == [
        ["test", "false_negative", pytest.approx(0.4)],
        ["test", "false_positive", pytest.approx(0.7)],
        ["val", "false_positive", pytest.approx(0.62)],
    ]
    assert gaps["predicted"].tolist() == ["invalid", "valid", "valid"]
    assert gaps["label"].tolist() == ["valid", "invalid", "invalid"]
    assert gaps["margin"].is_monotonic_decreasing


def png_size(figure: Figure) -> tuple[int, int]:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=50)
    return Image.open(buffer).size


@pytest.mark.parametrize("test_split", [TEST, ([0, 0, 0], [0.9, 0.2, 0.1])], ids=["both classes", "one class"])
def test_figures_are_drawn(test_split):
    scores = scores_table(VAL, test_split)
    point = choose_operating_point(scores, CHECKPOINT, small_config())
    metrics = measure_performance(scores, point, {"baseline": BASELINE_FIT, "patch": PATCH_OFF}, small_config(), seed=42)
    for interactive, static in (plot_precision_recall(scores, metrics), plot_roc(scores, metrics),
                                plot_score_histograms(scores, point)):
        assert isinstance(interactive, go.Figure) and interactive.data
        json.loads(interactive.to_json())
        assert min(png_size(static)) > 100
    assert min(png_size(plot_confusion_matrices(metrics))) > 100


def test_gallery_shows_thumbnails_and_survives_a_missing_file(tmp_path):
    paths = write_files(tmp_path, {f"{i}.png": png_bytes(noise_image(i, (30, 20))) for i in range(4)})
    gaps = pd.DataFrame({
        "split": "test", "path": [str(p) for p in paths] + [str(tmp_path / "gone.png")],
        "error": ["false_positive"] * 4 + ["false_negative"], "score": [0.9, 0.8, 0.7, 0.65, 0.1],
    })
    figure = draw_error_gallery(gaps, {"threshold": 0.6}, small_config(gallery_size=3))
    images = [axis for axis in figure.get_axes() if axis.get_images()]
    assert len(images) == 3  # three false positives shown; the missing false negative is a frame
    assert "4, the 3 most wrong shown" in " ".join(sub._suptitle.get_text() for sub in figure.subfigs)
    assert min(png_size(figure)) > 100
    empty = draw_error_gallery(gaps.iloc[:0], {"threshold": 0.6}, small_config())
    assert min(png_size(empty)) > 100


def test_on_small_data_auto_serves_the_fold_stack_thresholded_on_its_own_out_of_fold_scores(evaluation_scores):
    """The fold stack's out-of-fold scores are on the served stack's scale, so where the
    cross-validation made one it is served, its threshold chosen on them, and the record says what
    recall those scores allowed beside what the threshold keeps."""
    held_out = held_out_table(OOF_TARGETS, [0.5] * 30, OOF_BASELINE).assign(
        patch_classifier_score=np.float32(np.nan), fold_stack_score=np.array(OOF_PERFECT, np.float32))
    scores = evaluation_scores.assign(fold_stack_score=evaluation_scores["score"])
    point = choose_operating_point(scores, CHECKPOINT, small_config(rule="point"), held_out, scorer_models={"baseline": WEIGHTS, "fold_stack": {"kind": "fold stack", "grid": 4}})
    json.dumps(point, allow_nan=False)
    assert point["candidate"] == "fold_stack" and point["threshold_chosen_on"] == "out_of_fold"
    assert point["threshold"] == pytest.approx(min(OOF_PERFECT[:20]))
    assert point["validation"]["oracle_recall"] == 1.0 and point["validation"]["recall_efficiency"] == 1.0
    assert "fold_stack" in point["candidates_compared"]["held_out_average_precision"]
    # without the fold stack's weights it cannot be served, and the baseline is, as before
    assert choose_operating_point(scores, CHECKPOINT, small_config(rule="point"), held_out,
                                  scorer_models={"baseline": WEIGHTS})["candidate"] == "baseline"


def test_a_threshold_that_keeps_little_of_the_recall_its_images_allow_is_warned_about(evaluation_scores, caplog):
    """200 held-out images in two like folds: the top 74 are valid, the next 90 hold 76 valid and 14
    invalid, so a threshold of precision 150/164 keeps every valid one; the lower bound of precision
    reaches 0.90 only well above it, so the rule keeps far less. The folds score on one scale, so the
    run blames the rule's bound, says how much it cost and what to change."""
    targets = np.repeat([1] * 37 + ([1] * 5 + [0]) * 7 + [1] * 3 + [0] * 18, 2).tolist()  # each fold alike
    held_out = held_out_table(targets, [0.5] * 200, list(np.linspace(0.99, 0.01, 200)))
    point = choose_operating_point(evaluation_scores, CHECKPOINT,
                                   small_config(rule="lower_bound", out_of_fold_bound_level=0.95), held_out,
                                   scorer_models={"baseline": WEIGHTS})
    assert point["validation"]["oracle_recall"] == 1.0 and point["validation"]["recall_efficiency"] < 0.8
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "recall efficiency" in r.getMessage()]
    assert len(warned) == 1 and "Likely cause and fix" in warned[0] and "out_of_fold_bound_level" in warned[0]


def test_a_threshold_chosen_on_fold_scores_of_different_scales_is_warned_about(evaluation_scores, caplog):
    """Two folds rank their own images perfectly, but the second scores everything higher: pooled, its
    invalid images outrank the first fold's valid ones. Served pinned to the patch classifier, the run
    names the scales as the cause and the fold stack as the fix."""
    targets = [1] * 20 + [0] * 20
    first = list(np.linspace(0.70, 0.60, 20)) + list(np.linspace(0.50, 0.30, 20))
    second = list(np.linspace(0.99, 0.95, 20)) + list(np.linspace(0.90, 0.80, 20))
    held_out = pd.concat([held_out_table(targets, [0.5] * 40, first).assign(fold=0),
                          held_out_table(targets, [0.5] * 40, second).assign(fold=1)], ignore_index=True)
    held_out = held_out.assign(patch_classifier_score=held_out["baseline_score"], path=[f"/oof_{i}.png" for i in
                                                                                        range(80)])
    scores = evaluation_scores.assign(patch_classifier_score=evaluation_scores["score"])
    choose_operating_point(scores, CHECKPOINT, small_config(rule="point", operating_candidate="patch_classifier"),
                           held_out, scorer_models={"patch_classifier": {"grid": 4}})
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "scales of their own" in
              r.getMessage()]
    assert len(warned) == 1 and "fold stack" in warned[0]


def test_pinning_the_fold_stack_where_the_cross_validation_made_none_says_why(evaluation_scores):
    with pytest.raises(ParameterError, match="builds the fold stack, on small data only"):
        choose_operating_point(evaluation_scores, CHECKPOINT, small_config(operating_candidate="fold_stack"),
                               pd.DataFrame(), scorer_models={"baseline": WEIGHTS})


def _counts(tn: int, fp: int, fn: int, tp: int) -> dict:
    return {"true_negatives": tn, "false_positives": fp, "false_negatives": fn, "true_positives": tp,
            "precision": tp / (tp + fp), "recall": tp / (tp + fn)}


@pytest.mark.parametrize("served", ["fold_stack", "patch_classifier", "model"])
def test_the_confusion_figure_shows_the_served_score_first_beside_the_model_and_the_baseline(served):
    # the demo and defects-dev serve the patch classifier or the fold stack: a figure of the model and the
    # baseline alone never showed what a deployment decides
    metrics = {"operating_candidate": served,
               "model": {"threshold": 0.99999702, "test": _counts(9, 1, 2, 8)},
               "baseline": {"threshold": 0.7162933945655823, "test": _counts(8, 2, 1, 9)},
               "fold_stack": {"threshold": 0.805206298828125, "test": _counts(10, 0, 0, 10)},
               "patch_classifier": {"threshold": 0.5, "test": _counts(7, 3, 0, 10)}}
    figure = plot_confusion_matrices(metrics)
    titles = [axis.get_title() for axis in figure.axes]
    served_name = served.replace("_", " ")
    assert titles[0].startswith(f"served: {served_name} at threshold ")
    assert len(titles) == (2 if served == "model" else 3)
    assert any(title.startswith("model at threshold 0.99999702\n") or
               title.startswith("served: model at threshold 0.99999702\n") for title in titles)
    assert any(title.startswith("baseline at threshold 0.716\n") for title in titles)
    counts = sorted(int(text.get_text()) for text in figure.axes[0].texts)
    test = metrics[served]["test"]
    assert counts == sorted(test[key] for key in ("true_negatives", "false_positives", "false_negatives",
                                                  "true_positives"))


def test_the_error_gallery_captions_the_whole_file_name_and_the_threshold_with_its_digits(tmp_path):
    # names were once cut at 22 characters, and a threshold of 0.99999702 titled "1.000"
    name = "wafer_2024-03-01_line7_camera2_lot0042_pos13_rework.png"
    path = write_files(tmp_path, {name: png_bytes(noise_image(1, (30, 20)))})[0]
    gaps = pd.DataFrame({"split": ["test"], "path": [str(path)], "error": ["false_positive"], "score": [0.99999991]})
    figure = draw_error_gallery(gaps, {"threshold": 0.99999702}, small_config(gallery_size=3))
    captions = [axis.get_xlabel() for axis in figure.get_axes() if axis.get_images()]
    assert len(captions) == 1 and captions[0].rsplit("\n", 1)[0].replace("\n", "") == name
    assert "score 0.99999991" in captions[0]
    assert "at threshold 0.99999702 " in figure._suptitle.get_text()
