"""Nodes of the evaluate pipeline: an operating point chosen on validation, measured on test
beside a logistic-regression baseline, and the tables and figures that show what goes wrong."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score

from image_classification.artefacts import (
    Checkpoint,
    FeatureCache,
    OperatingPoint,
    ScoredIndex,
    jsonable,
)
from image_classification.baseline import BaselineWeights, LogisticBaseline
from image_classification.errors import DataError, ParameterError
from image_classification.images import thumbnail
from image_classification.metrics import metrics_at_threshold, oracle_recall, report_at_threshold, select_threshold
from image_classification.candidates import cross_validate, fit_patch_classifier, stack_inputs, stack_scores
from image_classification.fold_stack import (
    FoldStack,
    GlobalGate,
    fit_fold_stack,
    input_logits,
    platt,
    probability_logit,
)
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.train import TrainConfig
from image_classification.patches import PatchEnsemble, PatchMemory, grid_of
from image_classification.plots import evaluation as plots

logger = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")
OUT_OF_FOLD_COLUMNS = ["path", "split", "target", "fold", "score", "baseline_score", "patch_score",
                       "patch_classifier_score", "stack_score", "fold_stack_score"]
SCORE_COLUMNS = ["path", "split", "label", "target", "score", "baseline_score", "patch_score", "patch_classifier_score",
                 "stack_score", "fold_stack_score", "error"]
# every score evaluate measures: (key in evaluation_metrics.json, column of evaluation_scores, what it is)
CANDIDATES = (
    ("model", "score", "the trained model (the original head)"),
    ("baseline", "baseline_score", "logistic regression on pooled features"),
    ("patch", "patch_score", "patch evidence (negated distance to the valid patch memory)"),
    ("patch_classifier", "patch_classifier_score", "supervised patch evidence (a patch network trained on the labels)"),
    ("stack", "stack_score", "logistic regression over the other scores, fitted on validation"),
    ("fold_stack", "fold_stack_score", "the cross-validation's baseline and patch classifier fits, each calibrated on "
     "the images its fold did not see, stacked and averaged over the folds; 0 for an image unlike every valid "
     "training image as a whole (global gate)"),
)
THUMBNAIL_SIZE = 160


# ---------------------------------------------------------------- scores


def score_images(scored_index: dict, model_checkpoint: dict, image_index: pd.DataFrame) -> pd.DataFrame:
    """The trained model's scores (probability of valid) of the validation and test images, read
    from the score stage's one pass over the index.

    Returns:
        One row per validation and test image: path, split, label, target, score (NaN when the
        image could not be read) and error.
    """
    scored = ScoredIndex.from_payload(scored_index).check(image_index, Checkpoint.from_payload(model_checkpoint))
    rows = _evaluated_rows(image_index)
    table = scored.table(image_index).iloc[rows].reset_index(drop=True)
    table = table[["path", "split", "label", "target", "score", "error"]].astype({"target": "int8"})
    for split, scores in table.groupby("split")["score"]:
        logger.info("Model scores: %d %s images (%d unreadable, left out of every metric)", len(scores), split,
                    int(scores.isna().sum()))
    return table


def fit_baseline(backbone_features: dict, image_index: pd.DataFrame, evaluate: EvaluateConfig,
                 seed: int) -> tuple[pd.DataFrame, dict, dict]:
    """Fit a logistic regression on the frozen backbone's pooled features of the train split,
    with C chosen on validation, and score the validation and test images with it.

    Returns:
        ``path`` and ``baseline_score`` per validation and test image (rows as in
        :func:`score_images`); what was fitted: C and the validation score of every C tried; and the
        fitted weights as plain numbers (``baseline_model``), which the operating point carries when
        it serves the baseline.
    """
    cache = FeatureCache.from_payload(backbone_features).check_index(image_index)
    rows = _evaluated_rows(image_index)
    features, readable = cache.pooled.float().numpy(), cache.readable
    split, targets = image_index["split"].to_numpy(), image_index["target"].to_numpy(dtype=float, na_value=np.nan)
    train, val = (np.flatnonzero(readable & (split == name)) for name in ("train", "val"))
    baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, seed).fit(
        features[train], targets[train], features[val], targets[val])
    scores = np.where(readable[rows], baseline.score_samples(features[rows]), np.nan).astype(np.float32)
    logger.info("Baseline: logistic regression on %d train images' pooled %s features, C=%g chosen on validation "
                "(recall at target precision %.3f, average precision %.3f)", len(train), cache.backbone, baseline.c_,
                *baseline.quality_[baseline.c_])
    return (pd.DataFrame({"path": image_index["path"].to_numpy()[rows], "baseline_score": scores}),
            baseline.summary(cache.backbone, len(train)), BaselineWeights.of(baseline, cache.backbone).to_payload())


def score_patches(backbone_features: dict, image_index: pd.DataFrame, evaluate: EvaluateConfig, seed: int,
                  out_of_fold_scores: pd.DataFrame | None = None,
                  patch_classifier_folds: dict | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Patch evidence for every validation and test image, read from the feature cache: a memory of
    the valid train images' patches (:class:`~image_classification.patches.PatchMemory`) and, with
    ``evaluate.patch_classifier``, a patch network trained on the images' labels
    (:class:`~image_classification.patches.PatchClassifier`): on small data the mean of the
    cross-validation's fold fits (``patch_classifier_folds``, with ``out_of_fold_scores`` for the
    validation images), else one fit on the train split.

    Returns:
        ``path``, ``patch_score`` (minus the patch distance, so that higher means more like valid,
        as for the other scores; NaN when off or unreadable) and ``patch_classifier_score`` (its
        probability of valid; NaN when off) per validation and test image, what was fitted
        (or why nothing was), and the patch classifier's weights as plain numbers (``{}`` when it was
        not fitted), which the operating point carries when it serves it.
    """
    cache = FeatureCache.from_payload(backbone_features).check_index(image_index)
    rows = _evaluated_rows(image_index)
    scores = np.full(len(rows), np.nan, dtype=np.float32)
    reason = ("evaluate.patch_evidence is off" if not evaluate.patch_evidence else
              "the feature cache holds no patches (train.patch_grid is 0)" if cache.patches is None else None)
    train_valid = np.flatnonzero(cache.readable & (image_index["split"] == "train").to_numpy()
                                 & (image_index["target"] == 1).to_numpy())
    if reason is None and not len(train_valid):
        reason = "the train split has no readable valid image"
    if reason is not None:
        logger.info("Patch evidence not scored: %s", reason)
        return pd.DataFrame({"path": image_index["path"].to_numpy()[rows], "patch_score": scores,
                             "patch_classifier_score": scores.copy()}), {"enabled": False, "reason": reason}, {}
    start = time.perf_counter()
    memory = PatchMemory.fit(cache.patches[train_valid], evaluate.patch_coreset_fraction, evaluate.patch_memory_max,
                             evaluate.patch_top_k, seed)
    readable = cache.readable[rows]
    scores[readable] = -memory.anomaly_scores(cache.patches[rows[readable]])
    fitted = {"enabled": True, "description": "PatchCore-style patch evidence: distance of an image's most unusual "
              "patches to a coreset of the valid train images' patches", "train_valid_images": int(len(train_valid)),
              "grid": grid_of(cache.patches), **memory.describe()}
    logger.info("Patch evidence: memory of %d of %d patches from %d valid train images; %d images scored in %.1f s",
                fitted["memory_patches"], fitted["patches_seen"], len(train_valid), int(readable.sum()),
                time.perf_counter() - start)
    classifier_scores, fitted["classifier"], classifier = _patch_classifier(
        cache, image_index, rows, evaluate, seed, out_of_fold_scores, patch_classifier_folds)
    return pd.DataFrame({"path": image_index["path"].to_numpy()[rows], "patch_score": scores,
                         "patch_classifier_score": classifier_scores}), fitted, classifier


_PATCH_CLASSIFIER = ("a network scores every patch; an image is as defective as the mean of its top_k most "
                     "defective patches")


def _patch_classifier(cache: FeatureCache, image_index: pd.DataFrame, rows: np.ndarray, evaluate: EvaluateConfig,
                      seed: int, out_of_fold_scores: pd.DataFrame | None,
                      patch_classifier_folds: dict | None) -> tuple[np.ndarray, dict, dict]:
    """The patch classifier's scores of ``rows`` (NaN where unreadable or when there is none), what it
    is or why there is none, and its weights as plain numbers (``{}`` when there is none).

    Where cross-validation fitted it per fold (``patch_classifier_folds``), it is the mean of those
    fits (:class:`~image_classification.patches.PatchEnsemble`): each test image is scored by all of
    them, each validation image by the fold's fit that did not see it (its out-of-fold score), so
    both stay held out. Otherwise it is one fit on the readable labelled train images."""
    scores = np.full(len(rows), np.nan, dtype=np.float32)
    readable = cache.readable[rows]
    if evaluate.patch_classifier and patch_classifier_folds and out_of_fold_scores is not None:
        ensemble = PatchEnsemble.from_payload(patch_classifier_folds)
        split = image_index["split"].to_numpy()[rows]
        test = readable & (split == "test")
        scores[test] = ensemble.scores(cache.patches[rows[test]])
        held_out = out_of_fold_scores.set_index("path")["patch_classifier_score"]
        val = readable & (split == "val")
        scores[val] = held_out.reindex(image_index["path"].to_numpy()[rows[val]]).to_numpy(np.float32)
        logger.info("Patch classifier: the mean of the %d cross-validation fold fits; %d test images scored, "
                    "validation images by the fold fit that did not see them", len(ensemble.members), int(test.sum()))
        return scores, {"enabled": True, "description": f"{_PATCH_CLASSIFIER}; the mean of the cross-validation's "
                        "fold fits, each trained on the labels of its fold's other train and validation images; "
                        "validation images are scored by the fit that did not see them",
                        "fold_fits": len(ensemble.members),
                        **ensemble.members[0].describe()}, patch_classifier_folds
    train = np.flatnonzero(cache.readable & (image_index["split"] == "train").to_numpy()
                           & image_index["target"].notna().to_numpy())
    targets = image_index["target"].to_numpy(dtype=float, na_value=np.nan)[train].astype(int)
    reason = ("evaluate.patch_classifier is off" if not evaluate.patch_classifier else
              "the train split lacks readable images of one label" if len(np.unique(targets)) < 2 else None)
    if reason is not None:
        logger.info("Patch classifier not fitted: %s", reason)
        return scores, {"enabled": False, "reason": reason}, {}
    start = time.perf_counter()
    classifier = fit_patch_classifier(cache.patches[train], targets, evaluate, seed)
    scores[readable] = classifier.scores(cache.patches[rows[readable]])
    logger.info("Patch classifier: trained on %d train images' patches for %d epochs; %d images scored in %.1f s",
                len(train), evaluate.patch_classifier_epochs, int(readable.sum()), time.perf_counter() - start)
    # no timing in the record: evaluation_metrics.json stays the same figure for figure between equal runs
    return scores, {"enabled": True, "description": f"{_PATCH_CLASSIFIER}; trained on the train images' labels",
                    "train_images": int(len(train)), **classifier.describe()}, \
        classifier.to_payload(grid_of(cache.patches))


def join_scores(model_scores: pd.DataFrame, baseline_scores: pd.DataFrame, patch_scores: pd.DataFrame,
                image_index: pd.DataFrame, seed: int, fold_stack_scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every candidate's score side by side, one row per validation and test image, with the stacker's.

    The stacker is a logistic regression over the model's and the baseline's logits, the patch
    score and the patch classifier's (where there is one), fitted on the validation images. Its
    validation scores are cross-fitted over validation split groups (each scored by a stacker that
    never saw its group), so the threshold chosen on them is as honest as the others'; its test
    scores come from the stacker fitted on all of validation. The fold stack's scores
    (:func:`score_fold_stack`; NaN where there is none) are joined as they come.
    """
    others = [("baseline", baseline_scores), ("patch", patch_scores)]
    if fold_stack_scores is not None:
        others.append(("fold stack", fold_stack_scores))
    for name, other in others:
        if model_scores["path"].tolist() != other["path"].tolist():
            raise ValueError(f"model and {name} scores are not for the same images in the same order")
    table = model_scores.assign(baseline_score=baseline_scores["baseline_score"].to_numpy(),
                                patch_score=patch_scores["patch_score"].to_numpy(),
                                patch_classifier_score=patch_scores["patch_classifier_score"].to_numpy(),
                                fold_stack_score=np.nan if fold_stack_scores is None else
                                fold_stack_scores["fold_stack_score"].to_numpy(np.float32))
    groups = image_index.set_index("path").loc[table["path"], "split_group"].to_numpy() \
        if "split_group" in image_index else table["path"].to_numpy()
    stack, reason = stacked_scores(table, groups, seed)
    if reason:
        logger.info("No stacked score: %s", reason)
    return table.assign(stack_score=stack)[SCORE_COLUMNS]


def stacked_scores(table: pd.DataFrame, groups: np.ndarray, seed: int) -> tuple[np.ndarray, str | None]:
    """The stacker's score per row (NaN where any input is missing), or NaN and why there is none."""
    stack = np.full(len(table), np.nan, dtype=np.float32)
    if np.isnan(table["patch_score"].to_numpy(float)).all():
        return stack, "no patch score to stack"
    inputs = stack_inputs(table["score"], table["baseline_score"], table["patch_score"],
                          table["patch_classifier_score"])
    usable = ~np.isnan(inputs).any(axis=1)
    val = np.flatnonzero(usable & (table["split"] == "val").to_numpy())
    other = np.flatnonzero(usable & (table["split"] != "val").to_numpy())
    val_scores, other_scores, reason = stack_scores(inputs[val], table["target"].to_numpy(int)[val], groups[val],
                                                    inputs[other], seed)
    stack[val], stack[other] = val_scores, other_scores
    return stack, reason


def cross_validate_candidates(backbone_features: dict, image_index: pd.DataFrame, train: TrainConfig,
                              evaluate: EvaluateConfig, seed: int) -> tuple[dict, pd.DataFrame, dict, dict]:
    """On a small labelled set, every candidate over ``evaluate.cv_folds`` grouped, stratified folds
    of the train and validation images (:func:`~image_classification.candidates.cross_validate`):
    figures per fold and mean +- sd, so that one small split's luck does not pass for the model's
    quality, and an out-of-fold score of every one of those images, on which the operating point can
    be chosen (:func:`choose_operating_point`). The test split stays out, so the test figures remain
    a measurement of the choice and not part of it.

    Returns:
        The report (``{"enabled": False, "reason": ...}`` when it is off or the set is large enough
        for one split), per train and validation image its fold and every candidate's held-out
        score (no rows when it did not run), and the patch classifier's fold fits as plain numbers
        (:class:`~image_classification.patches.PatchEnsemble`; ``{}`` when there are none), which
        :func:`score_patches` scores with and the operating point serves; and the fold stack of the
        fold fits as plain numbers (:class:`~image_classification.fold_stack.FoldStack`; ``{}`` when
        there is none), whose out-of-fold scores are the ``fold_stack_score`` column.
    """
    cache = FeatureCache.from_payload(backbone_features).check_index(image_index)
    labelled = np.flatnonzero(cache.readable & image_index["split"].isin(("train", "val")).to_numpy(bool)
                              & image_index["target"].notna().to_numpy())
    reason = ("evaluate.cv_folds is 0" if not evaluate.cv_folds else
              f"{len(labelled)} labelled images, at least evaluate.cv_max_images ({evaluate.cv_max_images}): one "
              "split is large enough" if len(labelled) >= evaluate.cv_max_images else None)
    targets = image_index["target"].to_numpy(dtype=float, na_value=np.nan)[labelled].astype(int)
    groups = image_index["split_group" if "split_group" in image_index else "path"].to_numpy()[labelled]
    if reason is None and min(len(np.unique(groups[targets == c])) for c in (0, 1)) < evaluate.cv_folds:
        reason = f"fewer than {evaluate.cv_folds} groups of each label: too few for {evaluate.cv_folds} grouped folds"
    if reason is not None:
        logger.info("Cross-validation skipped: %s", reason)
        return {"enabled": False, "reason": reason}, pd.DataFrame({
            "path": pd.Series(dtype="string"), "split": pd.Series(dtype="string"), "target": pd.Series(dtype="int8"),
            "fold": pd.Series(dtype="int16"), **{c: pd.Series(dtype="float32") for c in OUT_OF_FOLD_COLUMNS[4:]}}), {}, {}
    logger.info("Cross-validating every candidate on %d grouped folds of the %d labelled train and validation "
                "images", evaluate.cv_folds, len(labelled))
    model = "the original head on the frozen backbone's cached features, trained per fold as train does"
    if train.trainable_blocks:
        # fine-tuning every fold would cost cv_folds more fine-tuning runs; say what the row measures
        model += (f"; not the model with {train.trainable_blocks} fine-tuned backbone blocks that train made and "
                  "predict serves (benchmarks/defects_quality.py --fine-tune measures that over folds)")
        logger.warning("Cross-validation's model row is the head on the frozen backbone, not the fine-tuned model "
                       "(train.trainable_blocks=%d)", train.trainable_blocks)
    patches = cache.patches[labelled] if cache.patches is not None and evaluate.patch_evidence else None
    report = cross_validate(cache.head_input[labelled], cache.pooled[labelled].float().numpy(), patches, targets,
                            groups, evaluate.cv_folds, train, evaluate, seed)
    held_out, fold_fits = report.pop("out_of_fold"), report.pop("patch_classifiers")
    baselines = [BaselineWeights.of(fit, cache.backbone) for fit in report.pop("baselines")]
    folds_payload = PatchEnsemble(fold_fits).to_payload(grid_of(patches)) if fold_fits else {}
    stack_payload = {}
    if fold_fits:
        raw_logits = input_logits(held_out["baseline"], held_out["patch_classifier"])
        gate = GlobalGate.fit(patches[targets == 1])
        stack, held_out["fold_stack"] = fit_fold_stack(raw_logits, held_out["fold"], targets, baselines, fold_fits,
                                                       held_out["global_gate_passes"], gate, grid_of(patches), seed)
        stack_payload = stack.to_payload()
        report["fold_stack"] = {**stack.describe(), **_held_out_figures(targets, held_out["fold_stack"], evaluate)}
        logger.info("Fold stack: baseline and patch classifier fits of %d folds, calibrated per fold and stacked "
                    "(coefficients %s); out-of-fold AUROC %s; the global gate refuses %d of %d out-of-fold images",
                    len(fold_fits), ", ".join(f"{k} {v:.2f}" for k, v in stack.describe()["stacker_coefficients"].items()),
                    _format(report["fold_stack"]["out_of_fold_auroc"]),
                    int((~held_out["global_gate_passes"]).sum()), len(targets))
    out_of_fold = image_index.iloc[labelled][["path", "split", "target"]].reset_index(drop=True).astype(
        {"target": "int8"}).assign(fold=held_out["fold"].astype("int16"))
    for key, column, _ in CANDIDATES:
        out_of_fold[column] = held_out.get(key, np.full(len(labelled), np.nan)).astype(np.float32)
    for name, figures in report["summary"].items():
        logger.info("Cross-validated %s: held-out AUROC %s +- %s, recall %s +- %s at the validation threshold, test "
                    "precision >= %.2f in %d of %d folds", name, _format(figures["test_auroc"]["mean"]),
                    _format(figures["test_auroc"]["sd"]), _format(figures["test_recall"]["mean"]),
                    _format(figures["test_recall"]["sd"]), evaluate.target_precision,
                    figures["folds_target_precision_held"], figures["folds"])
    return jsonable({"enabled": True, "labelled_images": int(len(labelled)), "splits": ["train", "val"],
                     "groups": int(len(np.unique(groups))), "model": model, **report}), out_of_fold, folds_payload, \
        stack_payload


def _held_out_figures(targets: np.ndarray, scores: np.ndarray, evaluate: EvaluateConfig) -> dict:
    """Threshold-free figures of out-of-fold scores, and the best recall any threshold reaches on them."""
    measured = metrics_at_threshold(targets, scores, 0.5)
    return {"out_of_fold_auroc": measured["auroc"], "out_of_fold_average_precision": measured["average_precision"],
            "out_of_fold_oracle_recall": oracle_recall(targets, scores, evaluate.target_precision)}


def score_fold_stack(backbone_features: dict, image_index: pd.DataFrame, fold_stack_model: dict,
                     out_of_fold_scores: pd.DataFrame) -> pd.DataFrame:
    """The fold stack's score of every validation and test image (NaN where there is no fold stack
    or the image is unreadable): test images scored by the served stack
    (:class:`~image_classification.fold_stack.FoldStack`), validation images by their out-of-fold
    score (the fits of the fold that did not see them), so both stay held out."""
    cache = FeatureCache.from_payload(backbone_features).check_index(image_index)
    rows = _evaluated_rows(image_index)
    scores = np.full(len(rows), np.nan, dtype=np.float32)
    paths = image_index["path"].to_numpy()[rows]
    if fold_stack_model and cache.patches is not None and len(out_of_fold_scores):
        stack = FoldStack.from_payload(fold_stack_model)
        split, readable = image_index["split"].to_numpy()[rows], cache.readable[rows]
        test = readable & (split == "test")
        scores[test] = stack.scores(cache.pooled[rows[test]], cache.patches[rows[test]])
        val = readable & (split == "val")
        held_out = out_of_fold_scores.set_index("path")["fold_stack_score"]
        scores[val] = held_out.reindex(paths[val]).to_numpy(np.float32)
        logger.info("Fold stack: %d test images scored by the mean of %d calibrated fold fits (%d refused by the "
                    "global gate), validation images by their out-of-fold scores", int(test.sum()),
                    len(stack.members), int((scores[test] == 0).sum()))
    return pd.DataFrame({"path": paths, "fold_stack_score": scores})


# ---------------------------------------------------------------- operating point and metrics


def choose_operating_point(evaluation_scores: pd.DataFrame, model_checkpoint: dict, evaluate: EvaluateConfig,
                           out_of_fold_scores: pd.DataFrame | None = None, seed: int = 42,
                           baseline_model: dict | None = None, patch_classifier_model: dict | None = None,
                           fold_stack_model: dict | None = None) -> dict:
    """Choose the served score (``evaluate.operating_candidate``) and its decision threshold, by the
    configured rule, on validation or on the out-of-fold scores (``evaluate.threshold_on``).

    Of the candidates predict can serve (the model; the baseline, the patch classifier and the fold
    stack when the backbone is frozen): on small data, where cross-validation ran
    (``out_of_fold_scores`` has rows), the fold stack
    (:mod:`~image_classification.fold_stack`: global and local evidence, on the scale of the
    out-of-fold scores its threshold is chosen on, and a global gate), or without one whichever of the
    baseline and the patch classifier has the higher mean held-out average precision over the folds
    (the record says how the model compares, and the run warns when it ranks clearly better); on large
    data the model, unless the baseline's or the patch classifier's validation average precision is
    clearly higher (the lower end of a paired bootstrap interval of the difference above 0; of two
    clearly better, the one of higher validation average precision). With ``threshold_on`` auto the
    baseline's and the patch classifier's thresholds are chosen on their out-of-fold scores, five
    times as many images as validation (benchmarks/oof_threshold.py measures what that buys), the
    model's on validation.

    Returns:
        The candidate, the threshold, why and how they were chosen and what the threshold achieves
        where it was chosen, with what of the checkpoint predict, zero_shot and embedding_analysis
        need to apply it to the right model.
    """
    checkpoint = Checkpoint.from_payload(model_checkpoint)
    out_of_fold_scores = out_of_fold_scores if out_of_fold_scores is not None else pd.DataFrame()
    served_weights = {"model": None, "baseline": baseline_model or None,
                      "patch_classifier": patch_classifier_model or None, "fold_stack": fold_stack_model or None}
    candidate, why, compared = _operating_candidate(evaluation_scores, out_of_fold_scores, checkpoint, evaluate, seed,
                                                    served_weights)
    column = _COLUMN[candidate]
    chosen_on = evaluate.threshold_on if evaluate.threshold_on != "auto" else \
        "validation" if candidate == "model" else "out_of_fold"
    held_out = out_of_fold_scores[out_of_fold_scores[column].notna()] if len(out_of_fold_scores) else out_of_fold_scores
    note = None
    if chosen_on == "out_of_fold" and held_out.empty:
        note = ("no out-of-fold scores (cross-validation did not run; cross_validation.json says why), so the "
                "threshold was chosen on validation")
        logger.info("Operating point: %s", note)
        chosen_on = "validation"
    if chosen_on == "out_of_fold":
        point = select_threshold(held_out["target"].to_numpy(int), held_out[column].to_numpy(np.float64), evaluate.rule,
                                 replace(evaluate.rule_settings, chosen_on="out-of-fold",
                                         bound_level=evaluate.out_of_fold_bound_level))
        where = (f"out-of-fold scores of {len(held_out)} train and validation images over "
                 f"{held_out['fold'].nunique()} grouped folds")
    else:
        point = select_threshold(*_scored(evaluation_scores, "val", column), evaluate.rule, evaluate.rule_settings)
        where = "the validation split"
    point |= {"threshold_chosen_on": chosen_on, "threshold_chosen_on_images": where, "why": why,
              "candidates_compared": compared, "threshold_note": note}
    logger.info("Operating point: the %s's score (%s); threshold chosen on %s", candidate, why, where)
    _log_operating_point(candidate.capitalize(), point)
    _warn_low_efficiency(point, _pooling_loss(held_out, column) if chosen_on == "out_of_fold" else 0.0,
                         "out_of_fold_bound_level" if chosen_on == "out_of_fold" else "bound_level")
    return jsonable(OperatingPoint.for_checkpoint(point, checkpoint, candidate, served_weights[candidate]).to_payload())


_COLUMN = {key: column for key, column, _ in CANDIDATES}


def _served(operating_point: dict) -> str:
    """The candidate whose score the operating point's threshold applies to."""
    return OperatingPoint.from_payload(operating_point).candidate


def _paired_average_precision_interval(evaluation_scores: pd.DataFrame, evaluate: EvaluateConfig,
                                      seed: int, column: str) -> tuple[float, float]:
    """Percentile bootstrap interval of one candidate's (``column``) validation AP minus the model's,
    on the same resampled validation images (``evaluate.bootstrap_samples``, ``evaluate.bootstrap_level``)."""
    rows = evaluation_scores[(evaluation_scores["split"] == "val") & evaluation_scores["score"].notna()
                             & evaluation_scores[column].notna()]
    targets, model, other = (rows[c].to_numpy(float) for c in ("target", "score", column))
    rng, differences = np.random.default_rng(seed), []
    for _ in range(evaluate.bootstrap_samples):
        pick = rng.integers(0, len(rows), len(rows))
        if 0 < targets[pick].sum() < len(pick):
            differences.append(average_precision_score(targets[pick], other[pick])
                               - average_precision_score(targets[pick], model[pick]))
    if not differences:
        return float("nan"), float("nan")
    tail = 100 * (1 - evaluate.bootstrap_level) / 2
    return float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))


def _held_out_average_precision(out_of_fold_scores: pd.DataFrame, column: str) -> np.ndarray:
    """Per cross-validation fold, the average precision of one candidate's held-out scores (as
    cross_validation.json reports it per fold)."""
    return np.array([average_precision_score(fold["target"], fold[column])
                     for _, fold in out_of_fold_scores.groupby("fold", sort=True)], dtype=float)


def _servable(evaluation_scores: pd.DataFrame, checkpoint: Checkpoint,
              served_weights: dict[str, dict | None]) -> tuple[list[str], dict[str, str]]:
    """The candidates predict can serve, and why each other servable kind cannot be served here."""
    servable, why_not = ["model"], {}
    for name in ("baseline", "patch_classifier", "fold_stack"):
        column = _COLUMN[name]
        if checkpoint.fine_tuned_blocks:
            why_not[name] = (f"the checkpoint's backbone has {checkpoint.fine_tuned_blocks} fine-tuned blocks, and the "
                             f"{name} was fitted on the frozen backbone's features")
        elif column not in evaluation_scores or evaluation_scores[column].isna().all():
            why_not[name] = f"there are no {name} scores" + (
                " (the cross-validation builds the fold stack, on small data only: cross_validation.json says "
                "whether it ran and why not)" if name == "fold_stack" else "")
        elif not served_weights.get(name):
            why_not[name] = f"no fitted {name} weights were given"
        else:
            servable.append(name)
    return servable, why_not


def _operating_candidate(evaluation_scores: pd.DataFrame, out_of_fold_scores: pd.DataFrame, checkpoint: Checkpoint,
                         evaluate: EvaluateConfig, seed: int,
                         served_weights: dict[str, dict | None]) -> tuple[str, str, dict]:
    """The served candidate, why, and the figures compared."""
    servable, why_not = _servable(evaluation_scores, checkpoint, served_weights)
    if evaluate.operating_candidate != "auto":
        if evaluate.operating_candidate not in servable:
            raise ParameterError(f"evaluate.operating_candidate is {evaluate.operating_candidate}, but "
                                 f"{why_not[evaluate.operating_candidate]}; use auto or model")
        return evaluate.operating_candidate, "pinned by evaluate.operating_candidate", {}
    # small data: only the fold-fitted scores' thresholds can be chosen on out-of-fold scores (early-stopped heads of
    # different folds do not score on one scale); the fold stack puts its folds on one scale by construction
    on_folds = [name for name in ("baseline", "patch_classifier", "fold_stack")
                if name in servable and len(out_of_fold_scores) and _COLUMN[name] in out_of_fold_scores]
    held_out = out_of_fold_scores.dropna(subset=["score", *(_COLUMN[n] for n in on_folds)]) if on_folds else None
    if on_folds and held_out["fold"].nunique() >= 2:
        per_fold = {name: _held_out_average_precision(held_out, _COLUMN[name]) for name in ["model", *on_folds]}
        best = "fold_stack" if "fold_stack" in on_folds else max(on_folds, key=lambda name: per_fold[name].mean())
        difference = per_fold["model"] - per_fold[best]
        margin = 2 * difference.std(ddof=1) / np.sqrt(len(difference))
        compared = {"held_out_average_precision": {name: {"per_fold": values.tolist(), "mean": float(values.mean())}
                                                   for name, values in per_fold.items()},
                    f"model_minus_{best}_held_out_average_precision": {
                        "per_fold": difference.tolist(), "mean": float(difference.mean()),
                        "two_standard_errors": float(margin)}}
        if best == "fold_stack":
            measure = ("on small data the fold stack: the baseline's (global) and the patch classifier's (local) fold "
                       "fits, each calibrated on the images its fold did not see, stacked, averaged over the folds and "
                       "gated, so that its out-of-fold scores, on which the threshold is chosen, are on the served "
                       "score's scale (benchmarks/oof_threshold.py measures it beside the others)")
        else:
            measure = ("on small data the one of the baseline and the patch classifier with the higher mean held-out "
                       "average precision over the folds; their thresholds are chosen on out-of-fold scores (the "
                       "model's cannot be: its fold heads score on different scales; benchmarks/oof_threshold.py "
                       "measures both)")
        details = (", ".join(f"{name} {per_fold[name].mean():.3f}" for name in per_fold)
                   + f" held-out average precision over {len(difference)} folds")
        if difference.mean() > margin:
            details += (f"; the model ranks clearly better on this data (by {difference.mean():+.3f}, two standard "
                        f"errors {margin:.3f}): evaluate.operating_candidate=model serves it, for more recall at a "
                        "less certain precision")
            logger.warning("Operating point: %s", details)
    else:
        # large data: validation is big enough to certify the model's threshold, and any other
        # servable candidate must rank it clearly better there to replace it
        others = [name for name in ("baseline", "patch_classifier") if name in servable]
        compared = {name: float(average_precision_score(*_scored(evaluation_scores, "val", _COLUMN[name])))
                    for name in ("model", *others)}
        measure = ("the model, unless the baseline's or the patch classifier's validation average precision is "
                   "clearly higher")
        details = ", ".join(f"{name} {_format(value)}" for name, value in compared.items())
        clearly = []
        for name in others:
            low, high = _paired_average_precision_interval(evaluation_scores, evaluate, seed, _COLUMN[name])
            compared[f"{name}_minus_model_validation_average_precision_interval"] = [low, high]
            details += (f"; {name.replace('_', ' ')} minus model {100 * evaluate.bootstrap_level:.0f}% interval "
                        f"[{low:+.4f}, {high:+.4f}]")
            if low > 0:
                clearly.append(name)
        best = max(clearly, key=lambda name: compared[name]) if clearly else "model"
    why = f"auto: {measure} ({details})"
    for name, reason in why_not.items():
        why += f"; the {name.replace('_', ' ')} is not served because {reason}"
    return best, why, {"measure": measure, **compared}


def measure_performance(evaluation_scores: pd.DataFrame, operating_point: dict, baseline_fit: dict,
                        patch_fit: dict, evaluate: EvaluateConfig, seed: int) -> dict:
    """Test metrics at the thresholds chosen on validation: the model, and beside it the baseline,
    the patch evidence and the stacker, each at a threshold chosen by the same rule on its own
    validation scores; and a table of all of them with the one of best validation average precision.
    """
    served = _served(operating_point)
    metrics = {"split": "test", "target_precision": evaluate.target_precision, "rule": evaluate.rule,
               "operating_candidate": served}
    fits = {"model": {}, "baseline": baseline_fit, "patch": patch_fit, "patch_classifier": patch_fit.get("classifier")}
    for key, column, description in CANDIDATES:
        if key != "model" and (column not in evaluation_scores or evaluation_scores[column].isna().all()):
            continue
        if key == served:
            point = operating_point
        else:
            point = select_threshold(*_scored(evaluation_scores, "val", column), evaluate.rule, evaluate.rule_settings)
            _log_operating_point(key.capitalize(), point)
        metrics[key] = {**(fits.get(key) or {"description": description}),
                        **_test_report(evaluation_scores, column, point, evaluate, seed)}
    if "patch" not in metrics:
        metrics["patch"] = patch_fit
    table = []
    for key, column, description in CANDIDATES:
        if key in metrics and "test" in metrics[key]:
            targets, scores = _scored(evaluation_scores, "val", column)
            test = metrics[key]["test"]
            table.append({"candidate": key, "description": description,
                          "val_average_precision": float(average_precision_score(targets, scores)),
                          "test_auroc": test["auroc"], "test_average_precision": test["average_precision"],
                          "test_recall": test["recall"], "test_precision": test["precision"],
                          "test_oracle_recall": test["oracle_recall"], "test_recall_efficiency": test["recall_efficiency"],
                          "target_precision_held": test["target_precision_held"]})
    best = max(table, key=lambda row: row["val_average_precision"])["candidate"]
    metrics["candidates"] = {"table": table, "best_by_validation_average_precision": best,
                             "operating_point_from": served,
                             "why": operating_point.get("why", "the operating point is the model's") + "; the other "
                                    "candidates are measured beside it, each at a threshold chosen on validation"}
    for row in table:
        _log_test_report(row["candidate"], metrics[row["candidate"]], evaluate.target_precision)
    chosen_on, test = operating_point["validation"], metrics[served]["test"]
    metrics["served"] = {
        "candidate": served, "threshold": operating_point["threshold"],
        "threshold_chosen_on": operating_point.get("threshold_chosen_on", "validation"),
        "chosen_on_recall": chosen_on["recall"], "chosen_on_oracle_recall": chosen_on.get("oracle_recall"),
        "chosen_on_recall_efficiency": chosen_on.get("recall_efficiency"),
        "test_precision": test["precision"], "test_recall": test["recall"], "test_oracle_recall": test["oracle_recall"],
        "test_recall_efficiency": test["recall_efficiency"]}
    logger.info("Served: the %s at threshold %.4f keeps test recall %s of the %s any threshold reaches at precision "
                "%.2f on the same images (recall efficiency %s; %s where it was chosen), test precision %s",
                served.replace("_", " "), operating_point["threshold"], _format(test["recall"]),
                _format(test["oracle_recall"]), evaluate.target_precision, _format(test["recall_efficiency"]),
                _format(chosen_on.get("recall_efficiency")), _format(test["precision"]))
    logger.info("Best validation average precision: %s (%s)", best,
                ", ".join(f"{row['candidate']} {row['val_average_precision']:.3f}" for row in table))
    return jsonable(metrics)


def list_errors(evaluation_scores: pd.DataFrame, operating_point: dict) -> pd.DataFrame:
    """Every validation and test image the model gets wrong at the operating point, most wrong first.

    ``margin`` is how far the score lies past the threshold on the wrong side: a false positive
    scored 0.99 at threshold 0.6 is more wrong than one scored 0.61.
    """
    threshold, column = operating_point["threshold"], _COLUMN[_served(operating_point)]
    scored = evaluation_scores.dropna(subset=[column]).assign(score=lambda table: table[column])
    called_valid = (scored["score"] >= threshold).to_numpy()
    wrong = called_valid != (scored["target"] == 1).to_numpy()
    errors = scored.loc[wrong, ["split", "path", "label", "score"]].assign(
        predicted=np.where(called_valid[wrong], "valid", "invalid"),
        error=np.where(called_valid[wrong], "false_positive", "false_negative"),
        threshold=threshold, margin=lambda table: (table["score"] - threshold).abs(),
    )
    logger.info("Gap analysis: %d false positives and %d false negatives on validation and test",
                int(called_valid[wrong].sum()), int((~called_valid[wrong]).sum()))
    return errors.sort_values(["margin", "path"], ascending=[False, True], ignore_index=True)


# ---------------------------------------------------------------- figures


def plot_precision_recall(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> tuple[go.Figure, Figure]:
    """Test precision-recall curves of the model and the baseline, operating points and target marked."""
    series, target = _test_series(evaluation_scores, evaluation_metrics), evaluation_metrics["target_precision"]
    return plots.precision_recall_plotly(series, target), plots.precision_recall_figure(series, target)


def plot_roc(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> tuple[go.Figure, Figure]:
    """Test ROC curves of the model and the baseline, operating points marked."""
    series = _test_series(evaluation_scores, evaluation_metrics)
    return plots.roc_plotly(series), plots.roc_figure(series)


def plot_score_histograms(evaluation_scores: pd.DataFrame, operating_point: dict) -> tuple[go.Figure, Figure]:
    """The served score per true class on validation and on test, with the operating threshold drawn."""
    candidate = _served(operating_point)
    panels = {f"{candidate}, {name} split": plots.ScoredSplit(candidate, *_scored(evaluation_scores, split,
                                                                                  _COLUMN[candidate]),
                                                              operating_point["threshold"])
              for split, name in (("val", "validation"), ("test", "test"))}
    return plots.score_histogram_plotly(panels), plots.score_histogram_figure(panels)


def plot_confusion_matrices(evaluation_metrics: dict) -> Figure:
    """Test confusion matrices of the model and the baseline at their thresholds."""
    panels = {
        f"{name} at threshold {block['threshold']:.3f}\nprecision {_format(block['test']['precision'])}, "
        f"recall {_format(block['test']['recall'])}": block["test"]
        for name, block in (("model", evaluation_metrics["model"]), ("baseline", evaluation_metrics["baseline"]))
    }
    return plots.confusion_matrix_figure(panels)


def draw_error_gallery(gap_analysis: pd.DataFrame, operating_point: dict, evaluate: EvaluateConfig) -> Figure:
    """Thumbnails of the most wrong false positives and false negatives, with their scores."""
    rows = {}
    for error, title in (("false_positive", "False positives: invalid images called valid"),
                         ("false_negative", "False negatives: valid images missed")):
        errors = gap_analysis[gap_analysis["error"] == error]
        shown = "" if len(errors) <= evaluate.gallery_size else f", the {evaluate.gallery_size} most wrong shown"
        rows[f"{title}: {len(errors)}{shown}"] = [
            (thumbnail(row.path, THUMBNAIL_SIZE), f"{row.path.rsplit('/', 1)[-1][:22]}\n{row.split} split, score {row.score:.3f}")
            for row in errors.head(evaluate.gallery_size).itertuples()
        ]
    title = (f"Errors of the {_served(operating_point).replace('_', ' ')} at threshold {operating_point['threshold']:.3f} "
             "on validation and test, most wrong first")
    return plots.error_gallery_figure(rows, title)


# ---------------------------------------------------------------- helpers


def _evaluated_rows(image_index: pd.DataFrame) -> np.ndarray:
    """Positions of the validation and test images in the index."""
    return np.flatnonzero(image_index["split"].isin(EVALUATED_SPLITS).to_numpy(dtype=bool))


def _scored(evaluation_scores: pd.DataFrame, split: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets and scores of one split's readable images."""
    rows = evaluation_scores[(evaluation_scores["split"] == split) & evaluation_scores[column].notna()]
    return rows["target"].to_numpy(dtype=int), rows[column].to_numpy(dtype=np.float64)


def _test_report(evaluation_scores: pd.DataFrame, column: str, point: dict, config: EvaluateConfig, seed: int) -> dict:
    """One classifier's test metrics at its threshold, intervals, and the oracle for comparison."""
    targets, scores = _scored(evaluation_scores, "test", column)
    if not len(targets):
        raise DataError("the test split has no readable image to measure on; give it a share in "
                        "data_prep.split and rerun data_prep and train")
    report = report_at_threshold(targets, scores, point["threshold"], config.target_precision,
                                 config.bootstrap_samples, config.bootstrap_level, seed)
    return {
        "threshold": point["threshold"],
        "chosen_on_validation": {key: point[key] for key in ("rule", "reached", "fallback", "validation")},
        **report,
        "unscored_test_images": int(((evaluation_scores["split"] == "test") & evaluation_scores[column].isna()).sum()),
    }


def _test_series(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> list[plots.ScoredSplit]:
    names = {"model": "model", "baseline": "baseline (logistic regression)", "patch": "patch evidence",
             "patch_classifier": "patch classifier", "stack": "stacked", "fold_stack": "fold stack (served on small data)"}
    return [plots.ScoredSplit(names[key], *_scored(evaluation_scores, "test", column),
                              evaluation_metrics[key]["threshold"])
            for key, column, _ in CANDIDATES if "threshold" in evaluation_metrics.get(key, {})]


def _log_operating_point(name: str, point: dict) -> None:
    validation = point["validation"]
    logger.info("%s operating point (rule %s): threshold %.4f; precision %.3f (%.0f%% %s lower bound %.3f), recall "
                "%.3f of an oracle %.3f (recall efficiency %s) on %d images of %s", name, point["rule"],
                point["threshold"], validation["precision"], 100 * validation["bound_level"],
                validation["bound_method"], validation["precision_lower_bound"], validation["recall"],
                validation["oracle_recall"], _format(validation["recall_efficiency"]), validation["images"],
                point.get("threshold_chosen_on_images", "the validation split"))
    if not point["reached"]:
        logger.warning("%s: target precision %.2f NOT reached on %s. %s", name, point["target_precision"],
                       point.get("threshold_chosen_on_images", "the validation split"), point["fallback"])


LOW_EFFICIENCY = 0.8
POOLING_LOSS = 0.01  # AUROC lost by pooling fold scores on their own scales: enough to blame the scales


def _pooling_loss(held_out: pd.DataFrame, column: str) -> float:
    """How much better out-of-fold scores rank once each fold is put on one scale (Platt-calibrated on
    its own rows, as the fold stack does) than pooled as they are: the AUROC that fold fits scoring on
    scales of their own cost."""
    targets, folds = held_out["target"].to_numpy(int), held_out["fold"].to_numpy()
    raw = probability_logit(held_out[column].to_numpy(float))
    calibrated = raw.copy()
    for number in np.unique(folds):
        rows = folds == number
        a, b = platt(raw[rows], targets[rows])
        calibrated[rows] = a * raw[rows] + b
    loss = (metrics_at_threshold(targets, calibrated, 0.5)["auroc"] - metrics_at_threshold(targets, raw, 0.5)["auroc"])
    return float(loss) if np.isfinite(loss) else 0.0


def _warn_low_efficiency(point: dict, pooling_loss: float, level: str) -> None:
    """One warning when the threshold keeps under ``LOW_EFFICIENCY`` of the recall its own images allow,
    naming the likelier cause: fold scores on different scales, or the rule's confidence bound."""
    validation = point["validation"]
    efficiency = validation.get("recall_efficiency")
    if efficiency is None or efficiency >= LOW_EFFICIENCY:
        if pooling_loss > POOLING_LOSS:  # the oracle of pooled scores suffers as much: say it apart
            logger.warning("The out-of-fold scores the threshold was chosen on rank worse pooled than each fold on one "
                           "scale (AUROC %.3f lower): their fold fits score on scales of their own, so the threshold "
                           "may keep less of the served score's recall than it did there. "
                           "evaluate.operating_candidate=auto serves the fold stack, which calibrates every fold "
                           "before pooling", pooling_loss)
        return
    if pooling_loss > POOLING_LOSS:
        cause = (f"the fold fits score on scales of their own: pooled as they are, their out-of-fold scores rank worse than "
                 f"each on one scale (AUROC {pooling_loss:.3f} lower); evaluate.operating_candidate=auto serves the fold stack, "
                 "which calibrates every fold before pooling")
    else:
        cause = (f"the rule's confidence bound costs recall on {validation['images']} images "
                 f"({validation['valid_images']} valid); more labelled images, a lower evaluate.{level}, or "
                 "evaluate.rule=point keep more, at a less certain precision")
    logger.warning("Operating point keeps recall %.3f where a threshold on the same %d images reaches %.3f at "
                   "precision %.2f (recall efficiency %.2f, under %.2f). Likely cause and fix: %s", validation["recall"],
                   validation["images"], validation["oracle_recall"], point["target_precision"], efficiency,
                   LOW_EFFICIENCY, cause)


def _log_test_report(name: str, report: dict, target: float) -> None:
    test, bootstrap = report["test"], report["test_bootstrap"]
    oracle = report["oracle_picked_on_test"]["recall_at_target_precision"]
    logger.info("Test, %s at threshold %.4f: recall %s [%s-%s], precision %s [%s-%s] (%.0f%% bootstrap), target "
                "precision %.2f %s; AUROC %s, AP %s; oracle recall (threshold picked on test) %s, recall efficiency %s",
                name, report["threshold"], _format(test["recall"]), *map(_format, bootstrap["recall"]),
                _format(test["precision"]), *map(_format, bootstrap["precision"]), 100 * bootstrap["level"], target,
                "held" if test["target_precision_held"] else "NOT held", _format(test["auroc"]),
                _format(test["average_precision"]), _format(oracle), _format(test["recall_efficiency"]))


def _format(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


