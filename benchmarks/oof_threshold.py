"""Does a threshold chosen on out-of-fold scores hold test precision better than one chosen on validation?

On small data the operating point is chosen on a validation split of a few hundred images, and on
defects-dev no candidate held test precision 0.90 in 4 of 5 grouped folds (defects_quality.py). With
k-fold cross-validation every labelled image gets an out-of-fold score, so a rule sees five times as
many images. This benchmark measures, nested so that nothing is chosen on a test fold:

- outer: the five grouped, stratified folds of ``candidates.grouped_folds`` (seed 42); each is the
  test set once, and the rest (train + validation) is what a user would have labelled;
- ``split``: today's way. Every candidate fitted on the outer train rows, its threshold chosen on the
  outer validation rows, measured on the test fold;
- inner: the labelled rest cut again into ``--inner`` grouped folds; every candidate is fitted per
  inner fold (``candidates.fold_scores``: early stopping / C / stacker on the inner validation rows)
  and scores its inner test fold (out-of-fold scores for the whole labelled rest) and the outer
  test fold; the patch classifier, which chooses nothing on validation, is fitted on the inner train
  and validation rows, as evaluate's cross-validation fits it
  (``candidates.held_out_patch_classifier``);
- ``oof -> ensemble``: the threshold chosen on the out-of-fold scores, applied to the mean of the
  inner models' scores of the test fold;
- ``oof -> split model``: the same threshold applied to the ``split`` model's scores (what the
  pipeline could do without changing the model it serves);
- ``pipeline auto``: what evaluate's ``choose_operating_point`` serves given all of that, and
  ``pipeline auto, no CV`` what it serves on large data, where cross-validation does not run: the
  split fits, chosen and thresholded on the validation rows alone.

Per candidate, arm and rule it prints mean +- sd of test recall and precision, the lowest precision
and in how many folds test precision reached the target, and the ensemble's test AUROC.

    python benchmarks/oof_threshold.py            # 5 x (1 + 5) fits per candidate (~15 min on 2 cores)
    python benchmarks/oof_threshold.py --quick    # 2 outer folds, 2 inner, 3 epochs: a smoke run
    python benchmarks/oof_threshold.py --positional true   # the patch classifier's evaluate.patch_classifier_positional
    python benchmarks/oof_threshold.py --backbone efficientnet_lite2 --cache /tmp/dq_lite2.safetensors
        # EfficientNet-Lite2's features (the cache is defects_quality.py's for that backbone)

Features come from defects_quality.py's cache (same file, same key).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
os.environ["TQDM_DISABLE"] = "1"

import defects_quality  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from image_classification.backbones import backbone_spec  # noqa: E402
from image_classification.baseline import BaselineWeights, LogisticBaseline  # noqa: E402
from image_classification.candidates import (  # noqa: E402
    NAMES,
    fit_patch_classifier,
    fold_scores,
    grouped_folds,
    held_out_patch_classifier,
)
from image_classification.metrics import metrics_at_threshold, select_threshold  # noqa: E402
from image_classification.parameters.evaluate import EvaluateConfig  # noqa: E402
from image_classification.parameters.train import TrainConfig  # noqa: E402
from image_classification.patches import grid_of  # noqa: E402
from image_classification.pipelines.evaluate.nodes import choose_operating_point  # noqa: E402

RULES = ("point", "lower_bound")
ARMS = ("split", "oof -> split model", "oof -> ensemble")
NO_CV = "pipeline auto, no CV"  # as evaluate serves on large data, where cross-validation does not run


def stand_in_checkpoint(backbone: str) -> dict:
    """What choose_operating_point needs of the checkpoint: ``backbone``, frozen, so the baseline and the
    patch classifier can be served."""
    spec = backbone_spec(backbone)
    return {"tensors": {}, "metadata": {
        "backbone": backbone, "weights": "imagenet", "input_size": spec.input_size, "mean": list(spec.mean),
        "std": list(spec.std), "head": {"in_channels": spec.feature_channels, "hidden_channels": 320,
                                        "embedding_dim": 50, "num_classes": 2},
        "class_names": ["invalid", "valid"], "best_epoch": 1, "fine_tuned_blocks": 0, "seed": 42, "epochs_run": 1}}


def nested_scores(feats: dict, y: np.ndarray, groups: np.ndarray, outer: int, inner: int, train: TrainConfig,
                  evaluate: EvaluateConfig, backbone: str) -> list[dict]:
    """Per outer fold: the test rows, and per candidate the split model's validation and test scores,
    the out-of-fold scores of the labelled rest (with its rows) and the inner models' mean test score."""
    head_input, pooled, patches = feats["head_input"], feats["pooled"].float().numpy(), feats["patches"]
    out = []
    for number, rows in enumerate(grouped_folds(y, groups, outer, seed=42)):
        start = time.perf_counter()
        val, test = fold_scores(head_input, pooled, patches, rows, y, groups, train, evaluate, 42 + number)
        rest = np.concatenate([rows["train"], rows["val"]])
        oof = {name: np.full(len(rest), np.nan) for name in val}
        inner_fold = np.full(len(rest), -1)
        inner_test = {name: [] for name in val}
        for inner_number, inner_rows in enumerate(grouped_folds(y[rest], groups[rest], inner, seed=100 + number)):
            absolute = {split: rest[index] for split, index in inner_rows.items()}
            held = len(absolute["test"])
            absolute["test"] = np.concatenate([absolute["test"], rows["test"]])
            _, scored = fold_scores(head_input, pooled, patches, absolute, y, groups, train, evaluate,
                                    1000 + 10 * number + inner_number)
            if "patch_classifier" in scored:  # as evaluate's cross-validation scores it: fitted on train + validation
                _, scored["patch_classifier"] = held_out_patch_classifier(patches, absolute, y, evaluate,
                                                                          1000 + 10 * number + inner_number)
            inner_fold[inner_rows["test"]] = inner_number
            for name, scores in scored.items():
                oof[name][inner_rows["test"]] = scores[:held]
                inner_test[name].append(scores[held:])
        # the split baseline's weights as evaluate saves them (the baseline fold_scores fitted, fitted again); the patch
        # classifier's weights only mark it servable (its test scores are the inner fits' mean, as evaluate serves it)
        baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, 42 + number).fit(
            pooled[rows["train"]], y[rows["train"]], pooled[rows["val"]], y[rows["val"]])
        classifier = fit_patch_classifier(patches[rows["train"]], y[rows["train"]], evaluate, 42 + number) \
            if evaluate.patch_classifier else None
        out.append({"backbone": backbone, "test": rows["test"], "rest": rest, "val_rows": rows["val"],
                    "split_val": val, "split_test": test,
                    "oof": oof, "inner_fold": inner_fold,
                    "weights": BaselineWeights.of(baseline, backbone).to_payload(),
                    "patch_classifier": classifier.to_payload(grid_of(patches)) if classifier
                    else None,
                    "ensemble_test": {name: np.mean(parts, axis=0) for name, parts in inner_test.items()}})
        print(f"outer fold {number}: {time.perf_counter() - start:.0f} s; test AUROC split / ensemble: " + ", ".join(
            f"{name} {metrics_at_threshold(y[rows['test']], test[name], 0.5)['auroc']:.3f} / "
            f"{metrics_at_threshold(y[rows['test']], out[-1]['ensemble_test'][name], 0.5)['auroc']:.3f}"
            for name in test if not np.isnan(test[name]).all()), flush=True)
    return out


def chosen(fold: dict, names: tuple[str, ...], arm: str, y: np.ndarray) -> str:
    """The candidate of ``names`` with the best average precision on held-out images: the outer
    validation rows (``split``), or the mean over inner folds of each fold's held-out AP (as the
    pipeline's cross-validation averages it; pooled out-of-fold scores mix models of other scales)."""
    def average_precision(name: str) -> float:
        if arm == "split":
            return average_precision_score(y[fold["val_rows"]], fold["split_val"][name])
        targets = y[fold["rest"]]
        return float(np.mean([average_precision_score(targets[fold["inner_fold"] == k],
                                                      fold["oof"][name][fold["inner_fold"] == k])
                              for k in np.unique(fold["inner_fold"])]))

    return max(names, key=average_precision)


def pipeline_choice(fold: dict, y: np.ndarray, evaluate: EvaluateConfig, cross_validated: bool = True) -> dict:
    """What evaluate's ``choose_operating_point`` serves on this outer fold (``operating_candidate``
    and ``threshold_on`` auto), from the split models' validation scores, the out-of-fold scores
    (none without ``cross_validated``: large data) and the split baseline's and patch classifier's weights."""
    columns = {"model": "score", "baseline": "baseline_score", "patch": "patch_score",
               "patch_classifier": "patch_classifier_score", "stack": "stack_score"}
    columns = {name: column for name, column in columns.items() if name in fold["split_val"]}
    rows = np.concatenate([fold["val_rows"], fold["test"]])
    evaluation = pd.DataFrame({"path": [f"image_{row}" for row in rows], "target": y[rows],
                               "split": ["val"] * len(fold["val_rows"]) + ["test"] * len(fold["test"])})
    held_out = pd.DataFrame({"path": [f"rest_{i}" for i in range(len(fold["rest"]))], "split": "train",
                             "target": y[fold["rest"]], "fold": fold["inner_fold"]})
    for name, column in columns.items():
        evaluation[column] = np.concatenate([fold["split_val"][name], fold["split_test"][name]])
        held_out[column] = fold["oof"][name]
    return choose_operating_point(evaluation, stand_in_checkpoint(fold["backbone"]), evaluate,
                                  held_out if cross_validated else pd.DataFrame(),
                                  baseline_model=fold["weights"],
                                  patch_classifier_model=fold["patch_classifier"])


def measure(fold: dict, name: str, arm: str, rule: str, y: np.ndarray, evaluate: EvaluateConfig) -> dict:
    """One candidate, arm and rule on one outer fold: test recall and precision at the chosen threshold
    (``best of a+b``: the candidate of :func:`chosen` among a and b)."""
    if name.startswith("pipeline auto"):  # what evaluate would serve, threshold and all, on the served model's scores
        cross_validated = name == "pipeline auto"
        point = pipeline_choice(fold, y, replace(evaluate, rule=rule), cross_validated)
        # evaluate serves the patch classifier as the mean of its cross-validation fold fits; otherwise the split fits
        ensemble = cross_validated and point["candidate"] == "patch_classifier"
        served = fold["ensemble_test" if ensemble else "split_test"][point["candidate"]]
        measured = metrics_at_threshold(y[fold["test"]], served, point["threshold"])
        return {"recall": measured["recall"], "precision": measured["precision"], "auroc": measured["auroc"],
                "candidate": f"{point['candidate']}@{point['threshold_chosen_on']}"}
    if name.startswith("best of "):
        name = chosen(fold, tuple(name.removeprefix("best of ").split("+")), arm, y)
    settings = replace(evaluate, rule=rule).rule_settings
    if arm == "split":
        chosen_on, chosen_scores, tested = y[fold["val_rows"]], fold["split_val"][name], fold["split_test"][name]
    else:
        usable = ~np.isnan(fold["oof"][name])
        chosen_on, chosen_scores = y[fold["rest"]][usable], fold["oof"][name][usable]
        tested = fold["split_test"][name] if arm == "oof -> split model" else fold["ensemble_test"][name]
    threshold = select_threshold(chosen_on, chosen_scores, rule, settings)["threshold"]
    measured = metrics_at_threshold(y[fold["test"]], tested, threshold)
    return {"recall": measured["recall"], "precision": measured["precision"], "auroc": measured["auroc"],
            "candidate": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=defects_quality.DATA)
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/defects_quality_features.safetensors"))
    parser.add_argument("--quick", action="store_true", help="2 outer folds, 2 inner, 3 epochs")
    parser.add_argument("--positional", choices=["true", "false"],
                        help="evaluate.patch_classifier_positional (default: the project's), to compare both")
    args = parser.parse_args()
    if args.quick:
        args.outer, args.inner, args.epochs = 2, 2, 3
    manifest, y, groups = defects_quality.labelled(args.data, args.threads)
    feats = defects_quality.features(manifest, args.data, args.backbone, 14, args.cache)
    evaluate = EvaluateConfig(target_precision=args.target)
    if args.positional:
        evaluate = replace(evaluate, patch_classifier_positional=args.positional == "true")
    start = time.perf_counter()
    folds = nested_scores(feats, y, groups, args.outer, args.inner, TrainConfig(epochs=args.epochs), evaluate,
                          args.backbone)
    print(f"\n{args.data.name}, {args.backbone}: {args.outer} outer grouped folds, {args.inner} inner, "
          f"target precision {args.target}, patch classifier positional {evaluate.patch_classifier_positional}, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'candidate':28s} {'arm':20s} {'rule':11s} {'test AUROC':>14s} {'test recall':>14s} {'test precision':>15s} "
          f"{'min prec':>8s} {'prec>=t':>7s}")

    def mean_sd(values) -> str:
        values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        return f"{np.nanmean(values):.3f} +- {np.nanstd(values, ddof=1) if len(values) > 1 else 0:.3f}"

    names = [n for n in NAMES if n in folds[0]["oof"] and not np.isnan(folds[0]["oof"][n]).all()]
    for name in (*names, "best of " + "+".join(names), "best of model+baseline", "pipeline auto", NO_CV):
        for arm in ARMS if not name.startswith("pipeline auto") else ("as evaluate serves it",):
            for rule in RULES:
                rows = [measure(fold, name, arm, rule, y, evaluate) for fold in folds]
                precisions = np.array([np.nan if r["precision"] is None else r["precision"] for r in rows], float)
                held = int(np.sum(np.nan_to_num(precisions, nan=0.0) >= args.target))
                note = ""
                if name.startswith("best of "):
                    note = f"  ({', '.join(r['candidate'] for r in rows)})"
                elif name.startswith("pipeline"):  # per fold, what is served and the recall it keeps
                    note = "  (" + ", ".join(f"{r['candidate']} recall {r['recall']:.3f}" for r in rows) + ")"
                print(f"{name:28s} {arm:20s} {rule:11s} {mean_sd([r['auroc'] for r in rows]):>14s} "
                      f"{mean_sd([r['recall'] for r in rows]):>14s} {mean_sd(precisions):>15s} "
                      f"{np.nanmin(precisions):8.3f} {held:>4d}/{len(rows)}{note}")


if __name__ == "__main__":
    main()
