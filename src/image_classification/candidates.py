"""Candidate scores side by side, and grouped cross-validation of all of them on small data.

Five scores of "valid" come from one pass of the frozen backbone (the feature cache):

- ``model``     the original head, trained on the cached head inputs (:func:`image_classification.training.fit`);
- ``baseline``  logistic regression on pooled features (:class:`~image_classification.baseline.LogisticBaseline`);
- ``patch``     patch evidence (:class:`~image_classification.patches.PatchMemory`), negated so higher means valid;
- ``patch_classifier``  supervised patch evidence (:class:`~image_classification.patches.PatchClassifier`),
  trained on the train images' labels;
- ``stack``     logistic regression over the other four, fitted on validation (:func:`stack_scores`).

On a few hundred test images one split's figures move by +-0.1 from seed to seed. :func:`cross_validate`
therefore repeats what the pipeline does on ``folds`` grouped, stratified folds: each fold is the test
set once, the rest is split by group into train and validation (three parts to one), every candidate is
fitted on train, its threshold chosen on validation by the configured rule, and measured on the fold.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from image_classification.baseline import LogisticBaseline
from image_classification.fold_stack import GlobalGate, probability_logit
from image_classification.metrics import metrics_at_threshold, oracle_recall, recall_efficiency, select_threshold
from image_classification.patches import PatchClassifier, PatchMemory

logger = logging.getLogger(__name__)

NAMES = ("model", "baseline", "patch", "patch_classifier", "stack")


def stack_inputs(model: np.ndarray, baseline: np.ndarray, patch: np.ndarray,
                 patch_classifier: np.ndarray | None = None) -> np.ndarray:
    """The stacker's inputs: the model's and the baseline's logits, the patch score and, where there
    is one, the patch classifier's logit."""
    columns = [probability_logit(model), probability_logit(baseline), np.asarray(patch, dtype=float)]
    if patch_classifier is not None and not np.isnan(np.asarray(patch_classifier, dtype=float)).all():
        columns.append(probability_logit(patch_classifier))
    return np.column_stack(columns)


def stack_scores(val_inputs: np.ndarray, val_targets: np.ndarray, val_groups: np.ndarray, other_inputs: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A stacker's validation scores, cross-fitted over validation groups (each image scored by a
    stacker that never saw its group), and its scores of ``other_inputs`` from the stacker fitted on
    all of validation; or NaN and the reason there is none."""
    nothing = (np.full(len(val_inputs), np.nan), np.full(len(other_inputs), np.nan))
    folds = min(5, len(np.unique(val_groups)), *(int(np.sum(val_targets == c)) for c in (0, 1)))
    if folds < 2:
        return *nothing, "too few validation groups or images of each label to cross-fit a stacker"

    def stacker():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", random_state=seed))

    val_scores = np.full(len(val_inputs), np.nan)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a fold short of one label's groups still fits
        for fitted_on, scored in splitter.split(val_inputs, val_targets, val_groups):
            if len(np.unique(val_targets[fitted_on])) < 2:
                return *nothing, "a cross-fitting fold of validation holds one label only"
            val_scores[scored] = stacker().fit(val_inputs[fitted_on], val_targets[fitted_on]).predict_proba(
                val_inputs[scored])[:, 1]
    other = stacker().fit(val_inputs, val_targets).predict_proba(other_inputs)[:, 1] if len(other_inputs) else \
        np.zeros(0)
    return val_scores, other, None


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


def fit_head(head_input: torch.Tensor, rows: dict[str, np.ndarray], targets: np.ndarray, train_config,
             seed: int) -> tuple[torch.nn.Module, pd.DataFrame, int]:
    """The original head trained on ``rows['train']`` with early stopping on ``rows['val']`` (as the
    train pipeline does with a frozen backbone), its best epoch's weights loaded; with its training
    history and best epoch."""
    from image_classification.model import ClassifierHead
    from image_classification.training import cached_feeds
    from image_classification.training import fit

    device = torch.device("cpu")
    split_targets = {split: targets[index] for split, index in rows.items()}
    torch.manual_seed(seed)  # the head's initial weights: the same fold trains the same head every time
    head = ClassifierHead(in_channels=head_input.shape[1])
    batches, val_scores = cached_feeds(head_input, rows, split_targets, train_config, seed, device)
    best, history, best_epoch = fit(head, batches, val_scores, split_targets["val"], split_targets["train"],
                                    train_config, device, seed, fingerprint=f"cross-validation {seed}")
    head.load_state_dict(best)
    return head, history, best_epoch


def head_scores(head_input: torch.Tensor, rows: dict[str, np.ndarray], targets: np.ndarray, train_config,
                seed: int) -> dict[str, np.ndarray]:
    """The head of :func:`fit_head` scoring validation and test."""
    from image_classification.runtime.scoring import head_outputs

    head, _, _ = fit_head(head_input, rows, targets, train_config, seed)
    return {split: head_outputs(head, head_input[rows[split]], torch.device("cpu"))[1] for split in ("val", "test")}


def fold_scores(head_input: torch.Tensor, pooled: np.ndarray, patches: torch.Tensor | None,
                rows: dict[str, np.ndarray], targets: np.ndarray, groups: np.ndarray, train_config, evaluate,
                seed: int, fits: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every candidate fitted on one fold's train rows: (validation scores, test scores) by name; the
    fitted baseline goes into ``fits`` (when given) under ``baseline``."""
    val, test = {}, {}
    val["model"], test["model"] = head_scores(head_input, rows, targets, train_config, seed).values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, seed).fit(
            pooled[rows["train"]], targets[rows["train"]], pooled[rows["val"]], targets[rows["val"]])
    val["baseline"], test["baseline"] = (baseline.score_samples(pooled[rows[s]]) for s in ("val", "test"))
    if fits is not None:
        fits["baseline"] = baseline
    if patches is not None:
        memory = PatchMemory.fit(patches[rows["train"][targets[rows["train"]] == 1]], evaluate.patch_coreset_fraction,
                                 evaluate.patch_memory_max, evaluate.patch_top_k, seed)
        val["patch"], test["patch"] = (-memory.anomaly_scores(patches[rows[s]]) for s in ("val", "test"))
        if evaluate.patch_classifier:
            classifier = fit_patch_classifier(patches[rows["train"]], targets[rows["train"]], evaluate, seed)
            val["patch_classifier"], test["patch_classifier"] = (classifier.scores(patches[rows[s]])
                                                                 for s in ("val", "test"))
        val["stack"], test["stack"], _ = stack_scores(
            stack_inputs(val["model"], val["baseline"], val["patch"], val.get("patch_classifier")),
            targets[rows["val"]], groups[rows["val"]],
            stack_inputs(test["model"], test["baseline"], test["patch"], test.get("patch_classifier")), seed)
    return val, test


def fit_patch_classifier(patches: torch.Tensor, targets: np.ndarray, evaluate, seed: int) -> PatchClassifier:
    """The :class:`~image_classification.patches.PatchClassifier` of ``evaluate``'s settings."""
    return PatchClassifier.fit(patches, targets, epochs=evaluate.patch_classifier_epochs,
                               hidden=evaluate.patch_classifier_hidden, top_k=evaluate.patch_classifier_top_k,
                               seed=seed, positional=evaluate.patch_classifier_positional)


def held_out_patch_classifier(patches: torch.Tensor, rows: dict[str, np.ndarray], targets: np.ndarray,
                              evaluate, seed: int) -> tuple[PatchClassifier, np.ndarray]:
    """The patch classifier's scores of ``rows['test']`` from a fit on all of the fold's other rows,
    train and validation: it trains a fixed number of epochs and chooses nothing on validation, so
    holding validation out of its fit only costs it images. Out-of-fold scores from these fits rank
    better than from fits on the train rows alone, and a threshold chosen on them kept more valid
    images at the same held precision on defects-dev (``benchmarks/patch_classifier.py --thresholds``).
    Returns the fit and those scores."""
    fitted_on = np.concatenate([rows["train"], rows["val"]])
    classifier = fit_patch_classifier(patches[fitted_on], targets[fitted_on], evaluate, seed)
    return classifier, classifier.scores(patches[rows["test"]])


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


def _mean_sd(values: list[float]) -> dict:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return {"mean": float(finite.mean()) if len(finite) else None,
            "sd": float(finite.std(ddof=1)) if len(finite) > 1 else None}


def cross_validate(head_input: torch.Tensor, pooled: np.ndarray, patches: torch.Tensor | None, targets: np.ndarray,
                   groups: np.ndarray, folds: int, train_config, evaluate, seed: int) -> dict:
    """Each candidate on ``folds`` grouped folds, as the pipeline would fit, threshold and measure it.

    Returns:
        ``folds``: per fold, the images, and per candidate the validation AP, test AUROC and AP, and
        the test recall and precision at the threshold chosen on validation by ``evaluate.rule``;
        ``summary``: per candidate, mean and sd over folds of each figure, and in how many folds test
        precision reached the target; ``best_by_validation_average_precision``: the candidate of the
        best mean validation AP; ``out_of_fold``: per row, its ``fold`` and every candidate's score
        from the models of the fold it was tested in (arrays, not JSON); the patch classifier's from
        its fit on the fold's train and validation rows (:func:`held_out_patch_classifier`), while
        its per-fold figures, like every candidate's, come from its fit on the train rows;
        ``patch_classifiers``: those fits, one per fold (empty without the patch classifier), with the
        fold's baseline fits (``baselines``) and, in ``out_of_fold["global_gate_passes"]``, whether
        each row passed the :class:`~image_classification.fold_stack.GlobalGate` fitted on the valid
        images of its fold's other rows: what :func:`~image_classification.fold_stack.fit_fold_stack`
        stacks.
    """
    per_fold, patch_classifiers, baselines = [], [], []
    out_of_fold = {"fold": np.full(len(targets), -1)}
    for number, rows in enumerate(grouped_folds(targets, groups, folds, seed)):
        start = time.perf_counter()
        fits = {}
        val, test = fold_scores(head_input, pooled, patches, rows, targets, groups, train_config, evaluate,
                                seed + number, fits)
        out_of_fold["fold"][rows["test"]] = number
        held_out = dict(test)
        if "patch_classifier" in test:
            classifier, held_out["patch_classifier"] = held_out_patch_classifier(patches, rows, targets, evaluate,
                                                                                 seed + number)
            patch_classifiers.append(classifier)
            baselines.append(fits["baseline"])
            fitted_on = np.concatenate([rows["train"], rows["val"]])
            gate = GlobalGate.fit(patches[fitted_on[targets[fitted_on] == 1]])
            out_of_fold.setdefault("global_gate_passes", np.ones(len(targets), bool))[rows["test"]] = gate.passes(
                patches[rows["test"]])
        for name, scores in held_out.items():
            out_of_fold.setdefault(name, np.full(len(targets), np.nan))[rows["test"]] = scores
        fold = {"fold": number, "images": {split: int(len(index)) for split, index in rows.items()},
                "test_groups": int(len(np.unique(groups[rows["test"]]))), "candidates": {}}
        for name in (n for n in NAMES if n in val and not np.isnan(val[n]).all()):
            fold["candidates"][name] = fold_figures(targets[rows["val"]], val[name], targets[rows["test"]], test[name],
                                                    evaluate)
        per_fold.append(fold)
        logger.info("Cross-validation fold %d of %d (%d test images, %d groups, %.0f s): test AUROC %s", number + 1,
                    folds, len(rows["test"]), fold["test_groups"], time.perf_counter() - start,
                    ", ".join(f"{n} {c['test_auroc']:.3f}" for n, c in fold["candidates"].items()))
    summary = {}
    for name in NAMES:
        results = [f["candidates"][name] for f in per_fold if name in f["candidates"]]
        if not results:
            continue
        summary[name] = {key: _mean_sd([r[key] for r in results]) for key in (
            "val_average_precision", "test_auroc", "test_average_precision", "test_recall", "test_precision",
            "test_oracle_recall", "test_recall_efficiency")}
        summary[name]["folds_target_precision_held"] = int(sum(r["target_precision_held"] for r in results))
        summary[name]["folds"] = len(results)
    best = max(summary, key=lambda n: summary[n]["val_average_precision"]["mean"] or 0.0)
    return {"folds": per_fold, "summary": summary, "best_by_validation_average_precision": best,
            "rule": evaluate.rule, "target_precision": evaluate.target_precision, "out_of_fold": out_of_fold,
            "patch_classifiers": patch_classifiers, "baselines": baselines}
