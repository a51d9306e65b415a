"""Grouped cross-validation of every registered scorer on small data, and the fold stack built from it.

On a few hundred test images one split's figures move by +-0.1 from seed to seed. :func:`cross_validate`
therefore repeats what evaluate does on ``folds`` grouped, stratified folds: each fold is the test set
once, the rest is split by group into train and validation (three parts to one), every scorer is
fitted on train (:meth:`~image_classification.scorers.Scorer.on_split`, the one fit path evaluate uses
too), its threshold chosen on validation by the configured rule, and measured on the fold.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedGroupKFold

from image_classification.artefacts import FeatureCache, jsonable
from image_classification.metrics import format_figure, metrics_at_threshold, oracle_recall, recall_efficiency, select_threshold
from image_classification.patches import PatchEnsemble, grid_of
from image_classification.scorers import SCORERS, Features, Labelled, Split, columns
from image_classification.global_gate import GlobalGate
from image_classification.patch_gaussian import PatchGaussian
from image_classification.scorers.fold_stack import FoldStack, fit_fold_stack, input_logits
from image_classification.scorers.base import LazyRows

logger = logging.getLogger(__name__)

STACKED_GAUSSIAN = "fold_stack_patch_gaussian"  # the held-out scores of the fold stack's patch Gaussian input
FIGURES = ("val_average_precision", "test_auroc", "test_average_precision", "test_recall", "test_precision",
           "test_oracle_recall", "test_recall_efficiency")


def grouped_folds(targets: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows of train, validation and test for each of ``folds`` grouped, stratified folds: the test
    rows are the fold; the rest is split by group, three parts train to one part validation."""
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer groups of one label than folds: still grouped
        for number, (rest, test) in enumerate(outer.split(np.zeros(len(targets)), targets, groups)):
            inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed + number)
            train, val = next(inner.split(rest, targets[rest], groups[rest]))
            yield {"train": rest[train], "val": rest[val], "test": test}


def fold_split(features: Features, targets: np.ndarray, groups: np.ndarray, rows: dict[str, np.ndarray],
               **context) -> Split:
    """One fold's rows as the :class:`~image_classification.scorers.Split` every scorer is fitted on."""
    def labelled(part: np.ndarray) -> Labelled:
        return Labelled(features.take(part), targets[part], groups[part])

    return Split(train=labelled(rows["train"]), val=labelled(rows["val"]), test=features.take(rows["test"]),
                 **context)


def fold_figures(val_targets: np.ndarray, val_scores: np.ndarray, test_targets: np.ndarray, test_scores: np.ndarray,
                 evaluate) -> dict:
    """One candidate on one fold: its validation AP, and on the test rows its AUROC, AP, and recall and
    precision at the threshold ``evaluate.rule`` chooses on validation."""
    point = select_threshold(val_targets, val_scores, evaluate.rule, evaluate.rule_settings)
    measured = metrics_at_threshold(test_targets, test_scores, point["threshold"])
    oracle = oracle_recall(test_targets, test_scores, evaluate.target_precision)
    return {
        "val_average_precision": float(average_precision_score(val_targets, val_scores)),
        "test_auroc": measured["auroc"], "test_average_precision": measured["average_precision"],
        "test_recall": measured["recall"], "test_precision": measured["precision"],
        "target_precision_held": bool(measured["precision"] >= evaluate.target_precision),
        "test_oracle_recall": oracle, "test_recall_efficiency": recall_efficiency(measured["recall"], oracle),
    }


def mean_sd(values: list[float]) -> dict:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return {"mean": float(finite.mean()) if len(finite) else None,
            "sd": float(finite.std(ddof=1)) if len(finite) > 1 else None}


def cross_validate(features: Features, targets: np.ndarray, groups: np.ndarray, folds: int, train_config, evaluate,
                   seed: int, backbone: str = "", grid: int = 0) -> dict:
    """Each cross-validated scorer on ``folds`` grouped folds, as evaluate would fit, threshold and measure it.

    Returns:
        ``folds``: per fold, the images, and per candidate the validation AP, test AUROC and AP, and
        the test recall and precision at the threshold chosen on validation by ``evaluate.rule``;
        ``summary``: per candidate, mean and sd over folds of each figure, and in how many folds test
        precision reached the target; ``best_by_validation_average_precision``: the candidate of the
        best mean validation AP; ``out_of_fold``: per row, its ``fold`` and every candidate's score
        from the models of the fold it was tested in (arrays, not JSON), those of a scorer that
        ``refit_for_out_of_fold`` from its fit on the fold's train and validation rows, while its
        per-fold figures, like every candidate's, come from its fit on the train rows; ``fold_fits``:
        per scorer, those refits and, where there are any, the fold's baselines, one per fold; and
        ``out_of_fold["global_gate_passes"]``, whether each row passed the
        :class:`~image_classification.global_gate.GlobalGate` fitted on the valid images of
        its fold's other rows: what :func:`build_fold_stack` stacks.
    """
    per_fold, fold_fits = [], {}
    out_of_fold = {"fold": np.full(len(targets), -1)}
    for number, rows in enumerate(grouped_folds(targets, groups, folds, seed)):
        start = time.perf_counter()
        logger.info("Cross-validation fold %d of %d: fitting every cross-validated score (held in memory: an "
                    "interrupted run starts cross-validation again)", number + 1, folds)
        split = fold_split(features, targets, groups, rows, backbone=backbone, grid=grid, train_config=train_config)
        scored = {}
        for name, kind in SCORERS.items():
            if kind.cross_validated:
                scored[name] = kind.on_split(split, evaluate, seed + number)
                split = split.with_scores(name, scored[name].val, scored[name].test)
        out_of_fold["fold"][rows["test"]] = number
        held_out = {name: result.test for name, result in scored.items()}
        refits = {}
        for name, result in scored.items():
            if SCORERS[name].refit_for_out_of_fold and result.available:
                train_and_val = Labelled(features.take(np.concatenate([rows["train"], rows["val"]])),
                                         np.concatenate([split.train.targets, split.val.targets]),
                                         np.concatenate([split.train.groups, split.val.groups]))
                refits[name] = SCORERS[name].fit(replace(split, train=train_and_val), evaluate, seed + number)
                held_out[name] = refits[name].score_samples(split.test)
        if "patch_classifier" in refits:
            fold_fits.setdefault("patch_classifier", []).append(refits["patch_classifier"])
            fold_fits.setdefault("baseline", []).append(scored["baseline"].fitted)
            fitted_on = np.concatenate([rows["train"], rows["val"]])
            if "patch_gaussian" in refits and evaluate.fold_stack_patch_gaussian:
                # the stack's third input reads the patch vectors the stack reads (docs/decisions/0036), not the
                # patch Gaussian scorer's fine ones
                coarse = PatchGaussian.fit(features.patches[fitted_on[targets[fitted_on] == 1]])
                fold_fits.setdefault("patch_gaussian", []).append(coarse)
                held_out[STACKED_GAUSSIAN] = -coarse.anomaly_scores(features.patches[rows["test"]])
            gate = GlobalGate.fit(features.patches[fitted_on[targets[fitted_on] == 1]])
            out_of_fold.setdefault("global_gate_passes", np.ones(len(targets), bool))[rows["test"]] = gate.passes(
                features.patches[rows["test"]])
        for name, scores in held_out.items():
            out_of_fold.setdefault(name, np.full(len(targets), np.nan))[rows["test"]] = scores
        fold = {"fold": number, "images": {part: int(len(index)) for part, index in rows.items()},
                "test_groups": int(len(np.unique(groups[rows["test"]]))), "candidates": {}}
        for name, result in scored.items():
            if not np.isnan(np.asarray(result.val, dtype=float)).all():
                fold["candidates"][name] = fold_figures(split.val.targets, result.val, targets[rows["test"]],
                                                        result.test, evaluate)
        per_fold.append(fold)
        logger.info("Cross-validation fold %d of %d (%d test images, %d groups, %.0f s): test AUROC %s", number + 1,
                    folds, len(rows["test"]), fold["test_groups"], time.perf_counter() - start,
                    ", ".join(f"{n} {c['test_auroc']:.3f}" for n, c in fold["candidates"].items()))
    summary = {}
    for name in SCORERS:
        results = [f["candidates"][name] for f in per_fold if name in f["candidates"]]
        if results:
            summary[name] = {key: mean_sd([r[key] for r in results]) for key in FIGURES}
            summary[name]["folds_target_precision_held"] = int(sum(r["target_precision_held"] for r in results))
            summary[name]["folds"] = len(results)
    best = max(summary, key=lambda n: summary[n]["val_average_precision"]["mean"] or 0.0)
    return {"folds": per_fold, "summary": summary, "best_by_validation_average_precision": best,
            "rule": evaluate.rule, "target_precision": evaluate.target_precision, "out_of_fold": out_of_fold,
            "fold_fits": fold_fits}


def build_fold_stack(held_out: dict, targets: np.ndarray, fold_fits: dict, patches: torch.Tensor,
                     seed: int) -> tuple[FoldStack, np.ndarray]:
    """The fold stack of the cross-validation's baseline, patch classifier and (where every fold has one) patch
    Gaussian fits, and its out-of-fold scores."""
    gaussians = fold_fits.get("patch_gaussian")
    if gaussians is not None and len(gaussians) != len(fold_fits["patch_classifier"]):
        logger.warning("The fold stack reads two inputs, not three: evaluate.fold_stack_patch_gaussian is on, but %d "
                       "of %d folds fitted no patch Gaussian (fewer than two readable valid images there)",
                       len(fold_fits["patch_classifier"]) - len(gaussians), len(fold_fits["patch_classifier"]))
        gaussians = None
    raw_logits = input_logits(held_out["baseline"], held_out["patch_classifier"],
                              held_out[STACKED_GAUSSIAN] if gaussians else None)
    gate = GlobalGate.fit(patches[targets == 1])
    return fit_fold_stack(raw_logits, held_out["fold"], targets, [fit.weights for fit in fold_fits["baseline"]],
                          [fit.ensemble.members[0] for fit in fold_fits["patch_classifier"]],
                          held_out["global_gate_passes"], gate, grid_of(patches), seed,
                          gaussians or None)


def held_out_figures(targets: np.ndarray, scores: np.ndarray, evaluate) -> dict:
    """Threshold-free figures of out-of-fold scores, and the best recall any threshold reaches on them."""
    measured = metrics_at_threshold(targets, scores, 0.5)
    return {"out_of_fold_auroc": measured["auroc"], "out_of_fold_average_precision": measured["average_precision"],
            "out_of_fold_oracle_recall": oracle_recall(targets, scores, evaluate.target_precision)}


def out_of_fold_columns() -> list[str]:
    """The columns of out_of_fold_scores: every scorer's score beside the row's fold."""
    return ["path", "split", "target", "fold", *columns().values()]


def skip_reason(labelled: int, targets: np.ndarray, groups: np.ndarray, evaluate) -> str | None:
    """Why the cross-validation does not run on these labelled images (None: it runs)."""
    if not evaluate.cv_folds:
        return "evaluate.cv_folds is 0"
    if labelled >= evaluate.cv_max_images:
        return (f"{labelled} labelled images, at least evaluate.cv_max_images ({evaluate.cv_max_images}): one split is "
                "large enough")
    if min(len(np.unique(groups[targets == c])) for c in (0, 1)) < evaluate.cv_folds:
        return f"fewer than {evaluate.cv_folds} groups of each label: too few for {evaluate.cv_folds} grouped folds"
    return None


def run(cache: FeatureCache, image_index: pd.DataFrame, train_config, evaluate, seed: int) -> tuple[dict, pd.DataFrame, dict]:
    """The cross-validation of the labelled train and validation images of ``image_index``: the report,
    per image its fold and every scorer's held-out score, and the fold fits as payloads by scorer name
    (``patch_classifier``: their :class:`~image_classification.patches.PatchEnsemble`; ``fold_stack``)."""
    labelled = np.flatnonzero(cache.readable & image_index["split"].isin(("train", "val")).to_numpy(bool)
                              & image_index["target"].notna().to_numpy())
    targets = image_index["target"].to_numpy(dtype=float, na_value=np.nan)[labelled].astype(int)
    groups = image_index["split_group" if "split_group" in image_index else "path"].to_numpy()[labelled]
    reason = skip_reason(len(labelled), targets, groups, evaluate)
    if reason is not None:
        logger.info("Cross-validation skipped: %s", reason)
        empty = pd.DataFrame({"path": pd.Series(dtype="string"), "split": pd.Series(dtype="string"),
                              "target": pd.Series(dtype="int8"), "fold": pd.Series(dtype="int16"),
                              **{c: pd.Series(dtype="float32") for c in out_of_fold_columns()[4:]}})
        return {"enabled": False, "reason": reason}, empty, {}
    logger.info("Cross-validating every candidate on %d grouped folds of the %d labelled train and validation "
                "images", evaluate.cv_folds, len(labelled))
    model = "the original head on the frozen backbone's cached features, trained per fold as train does"
    if train_config.trainable_blocks:
        # fine-tuning every fold would cost cv_folds more fine-tuning runs; say what the row measures
        model += (f"; not the model with {train_config.trainable_blocks} fine-tuned backbone blocks that train made "
                  "and predict serves (docs/decisions/0016 measures that over folds)")
        logger.warning("Cross-validation's model row is the head on the frozen backbone, not the fine-tuned model "
                       "(train.trainable_blocks=%d)", train_config.trainable_blocks)
    patches = cache.patches[labelled] if cache.patches is not None and evaluate.patch_evidence else None
    fine = LazyRows.of(cache.fine_patches, labelled) if patches is not None and cache.fine_patches is not None else None
    grid = grid_of(patches) if patches is not None else 0
    features = Features(head_input=cache.head_input[labelled], pooled=cache.pooled[labelled].float().numpy(),
                        patches=patches, fine_patches=fine)
    report = cross_validate(features, targets, groups, evaluate.cv_folds, train_config, evaluate, seed,
                            cache.backbone, grid)
    held_out, fold_fits = report.pop("out_of_fold"), report.pop("fold_fits")
    fold_models = {}
    if fold_fits.get("patch_classifier"):
        classifiers = [fit.ensemble.members[0] for fit in fold_fits["patch_classifier"]]
        fold_models["patch_classifier"] = PatchEnsemble(classifiers).to_payload(grid)
        stack, held_out["fold_stack"] = build_fold_stack(held_out, targets, fold_fits, patches, seed)
        fold_models["fold_stack"] = stack.to_payload()
        report["fold_stack"] = {**stack.describe(), **held_out_figures(targets, held_out["fold_stack"], evaluate)}
        logger.info("Fold stack: %s fits of %d folds, calibrated per fold and stacked "
                    "(coefficients %s); out-of-fold AUROC %s; the global gate refuses %d of %d out-of-fold images",
                    ", ".join(stack.inputs).replace("_", " "), len(classifiers), ", ".join(f"{k} {v:.2f}" for k, v in stack.describe()["stacker_coefficients"].items()),
                    format_figure(report["fold_stack"]["out_of_fold_auroc"]), int((~held_out["global_gate_passes"]).sum()),
                    len(targets))
    out_of_fold = image_index.iloc[labelled][["path", "split", "target"]].reset_index(drop=True).astype(
        {"target": "int8"}).assign(fold=held_out["fold"].astype("int16"))
    for name, column in columns().items():
        out_of_fold[column] = held_out.get(name, np.full(len(labelled), np.nan)).astype(np.float32)
    for name, figures in report["summary"].items():
        logger.info("Cross-validated %s: held-out AUROC %s +- %s, recall %s +- %s at the validation threshold, test "
                    "precision >= %.2f in %d of %d folds", name, format_figure(figures["test_auroc"]["mean"]),
                    format_figure(figures["test_auroc"]["sd"]), format_figure(figures["test_recall"]["mean"]),
                    format_figure(figures["test_recall"]["sd"]), evaluate.target_precision,
                    figures["folds_target_precision_held"], figures["folds"])
    return jsonable({"enabled": True, "labelled_images": int(len(labelled)), "splits": ["train", "val"],
                     "groups": int(len(np.unique(groups))), "model": model, **report}), out_of_fold, fold_models
