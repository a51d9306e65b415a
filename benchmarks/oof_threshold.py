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
- ``fold_stack``: the inner folds' baseline and patch classifier fits (and, with
  ``--fold-stack-patch-gaussian true``, patch Gaussian fits), calibrated per fold, stacked, averaged
  and gated (``image_classification.fold_stack``, as evaluate's cross-validation builds it), its
  threshold chosen on its cross-fitted out-of-fold scores and applied to it on the test fold; beside
  it the stack of the same fits with the patch Gaussian added (or, with the option, left out):
  docs/decisions/0036;
- ``pipeline auto``: what evaluate's ``choose_operating_point`` serves given all of that, and
  ``pipeline auto, no CV`` what it serves on large data, where cross-validation does not run: the
  split fits, chosen and thresholded on the validation rows alone.

Per candidate, arm and rule it prints mean +- sd of test recall and precision, the lowest precision
and in how many folds test precision reached the target, the ensemble's test AUROC, the oracle
recall (the best recall any threshold reaches at the target on the same test scores) and the recall
efficiency (test recall / oracle recall, per fold, then mean +- sd): what the rule gave away. The
rules are ``point`` and ``lower_bound`` at three confidence levels (``evaluate.bound_level``).
``--results-file`` appends every row as CSV.

    python -m benchmarks.oof_threshold            # 5 x (1 + 5) fits per candidate (~15 min on 2 cores)
    python -m benchmarks.oof_threshold --quick    # 2 outer folds, 2 inner, 3 epochs: a smoke run

Global defects: ``--global-defects N`` good cells of each test fold are made all black, all white, one
constant grey and heavily blurred; the ``pipeline auto`` rows say how many of them, and how many of
defects-dev's dead cells (mean grey level under 10%), what evaluate serves accepts.
    python -m benchmarks.oof_threshold --positional true   # the patch classifier's evaluate.patch_classifier_positional
    python -m benchmarks.oof_threshold --backbone efficientnet_lite2 --cache /tmp/dq_lite2.safetensors
        # EfficientNet-Lite2's features (the cache is defects_quality's for that backbone)

Features come from defects_quality's cache (same file, same key).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from sklearn.metrics import average_precision_score

from benchmarks import harness
from benchmarks.harness import (
    NAMES,
    extract_backbone_features,
    fit_patch_classifier,
    fold_scores,
    grouped_folds,
    held_out_patch_classifier,
)
from image_classification.backbones import backbone_spec, build_backbone
from image_classification.metrics import metrics_at_threshold, oracle_recall, recall_efficiency, select_threshold
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.train import TrainConfig
from image_classification.patches import grid_of
from image_classification.pipelines.evaluate.nodes import choose_operating_point
from image_classification.scorers.baseline import BaselineWeights, LogisticBaseline
from image_classification.patch_gaussian import PatchGaussian
from image_classification.global_gate import GlobalGate
from image_classification.scorers.fold_stack import fit_fold_stack, input_logits

RULES = (("point", 0.95), ("lower_bound", 0.8), ("lower_bound", 0.9), ("lower_bound", 0.95))
ARMS = ("split", "oof -> split model", "oof -> ensemble")
SERVED_ONLY = "oof -> served stack"  # the fold stack has no split fit: it is the inner folds' fits
OTHER_STACK = {True: "fold_stack without patch Gaussian", False: "fold_stack with patch Gaussian"}  # docs/decisions/0036
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


GLOBAL_DEFECTS = ("black", "white", "grey", "blur")
DEAD_GREY_LEVEL = 0.1  # a cell whose mean grey level is under 10% of full scale gave no light: dead


def global_defect(image: Image.Image, kind: str) -> Image.Image:
    """A defect that covers the whole cell, made from a good one: all black, all white, one constant grey
    (its own mean) or heavily blurred (Gaussian, radius 12 px on 300 px)."""
    grey = image.convert("L")
    return {"black": lambda: Image.new("L", grey.size, 0), "white": lambda: Image.new("L", grey.size, 255),
            "grey": lambda: Image.new("L", grey.size, int(np.asarray(grey).mean())),
            "blur": lambda: grey.filter(ImageFilter.GaussianBlur(12))}[kind]()


def global_defect_features(manifest: pd.DataFrame, root: Path, y: np.ndarray, groups: np.ndarray, outer: int,
                           per_fold: int, backbone: str) -> dict:
    """Pooled features and patches of :func:`global_defect` images made from ``per_fold`` good cells of
    each outer test fold (so every fold's served score meets them as new images), and which fold each is of."""
    paths, folds, kinds = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for number, rows in enumerate(grouped_folds(y, groups, outer, seed=42)):
            good = rows["test"][y[rows["test"]] == 1][:per_fold]
            for row in good:
                with Image.open(root / manifest["path"].iloc[row]) as image:
                    for kind in GLOBAL_DEFECTS:
                        path = Path(folder) / f"{kind}_{row}.png"
                        global_defect(image, kind).save(path)
                        paths.append(str(path)), folds.append(number), kinds.append(kind)
        spec = backbone_spec(backbone)
        out = extract_backbone_features(build_backbone(backbone), paths, spec, torch.device("cpu"), batch_size=32,
                                        patch_grid=14)
    return {"pooled": out["pooled"].float().numpy(), "patches": out["patches"], "fold": np.array(folds),
            "kind": np.array(kinds)}


def dead_cells(manifest: pd.DataFrame, root: Path) -> np.ndarray:
    """Rows of cells whose mean grey level is under ``DEAD_GREY_LEVEL`` of full scale."""
    means = []
    for path in manifest["path"]:
        with Image.open(root / path) as image:
            means.append(np.asarray(image.convert("L"), dtype=np.float32).mean() / 255)
    return np.flatnonzero(np.array(means) < DEAD_GREY_LEVEL)


def nested_scores(feats: dict, y: np.ndarray, groups: np.ndarray, outer: int, inner: int, train: TrainConfig,
                  evaluate: EvaluateConfig, backbone: str, synthetic: dict | None = None) -> list[dict]:
    """Per outer fold: the test rows, and per candidate the split model's validation and test scores,
    the out-of-fold scores of the labelled rest (with its rows) and the inner models' mean test score;
    with ``synthetic`` (:func:`global_defect_features`), the fold stack's scores of the fold's global defects."""
    head_input, pooled, patches = feats["head_input"], feats["pooled"].float().numpy(), feats["patches"]
    out = []
    for number, rows in enumerate(grouped_folds(y, groups, outer, seed=42)):
        start = time.perf_counter()
        val, test = fold_scores(head_input, pooled, patches, rows, y, groups, train, evaluate, 42 + number,
                                fine_patches=feats["fine_patches"])
        rest = np.concatenate([rows["train"], rows["val"]])
        oof = {name: np.full(len(rest), np.nan) for name in val}
        inner_fold = np.full(len(rest), -1)
        inner_test = {name: [] for name in val}
        baselines, classifiers, gaussians, gate_passes = [], [], [], np.ones(len(rest), bool)
        for inner_number, inner_rows in enumerate(grouped_folds(y[rest], groups[rest], inner, seed=100 + number)):
            absolute = {split: rest[index] for split, index in inner_rows.items()}
            held = len(absolute["test"])
            absolute["test"] = np.concatenate([absolute["test"], rows["test"]])
            fits = {}
            _, scored = fold_scores(head_input, pooled, patches, absolute, y, groups, train, evaluate,
                                    1000 + 10 * number + inner_number, fits, feats["fine_patches"])
            if "patch_classifier" in scored:  # as evaluate's cross-validation scores it: fitted on train + validation
                classifier, scored["patch_classifier"] = held_out_patch_classifier(patches, absolute, y, evaluate,
                                                                                   1000 + 10 * number + inner_number)
                # what evaluate's cross-validation keeps for the fold stack
                baselines.append(replace(fits["baseline"], backbone=backbone))
                classifiers.append(classifier)
                fitted_on = rest[np.concatenate([inner_rows["train"], inner_rows["val"]])]
                if "patch_gaussian" in scored:  # refitted on train + validation, as the cross-validation does
                    gaussians.append(PatchGaussian.fit(patches[fitted_on[y[fitted_on] == 1]]))
                    scored["patch_gaussian"] = -gaussians[-1].anomaly_scores(patches[absolute["test"]])
                gate_passes[inner_rows["test"]] = GlobalGate.fit(patches[fitted_on[y[fitted_on] == 1]]).passes(
                    patches[rest[inner_rows["test"]]])
            inner_fold[inner_rows["test"]] = inner_number
            for name, scores in scored.items():
                oof[name][inner_rows["test"]] = scores[:held]
                inner_test[name].append(scores[held:])
        stack_payload, synthetic_scores = None, None
        if classifiers:  # the fold stack, as evaluate's cross_validate_candidates builds it from the same fits
            gate = GlobalGate.fit(patches[rest[y[rest] == 1]])
            stacks = {}
            for with_gaussian in ((False, True) if gaussians else (False,)):
                stacks[with_gaussian], scores = fit_fold_stack(
                    input_logits(oof["baseline"], oof["patch_classifier"],
                                 oof["patch_gaussian"] if with_gaussian else None),
                    inner_fold, y[rest], baselines, classifiers, gate_passes, gate, grid_of(patches), 42 + number,
                    gaussians if with_gaussian else None)
                name = "fold_stack" if with_gaussian == evaluate.fold_stack_patch_gaussian else OTHER_STACK[
                    evaluate.fold_stack_patch_gaussian]
                oof[name] = scores
                inner_test[name] = [stacks[with_gaussian].scores(pooled[rows["test"]], patches[rows["test"]])]
            stack = stacks[evaluate.fold_stack_patch_gaussian and bool(gaussians)]
            if synthetic is not None:
                mine = synthetic["fold"] == number
                synthetic_scores = {"kind": synthetic["kind"][mine], "score": stack.scores(
                    synthetic["pooled"][mine], synthetic["patches"][mine])}
            stack_payload = stack.to_payload()
            position = {row: i for i, row in enumerate(rest)}
            val["fold_stack"] = oof["fold_stack"][[position[row] for row in rows["val"]]]
            test["fold_stack"] = np.full(len(rows["test"]), np.nan)  # no split fit
        # the split baseline's weights as evaluate saves them (the baseline fold_scores fitted, fitted again); the patch
        # classifier's weights only mark it servable (its test scores are the inner fits' mean, as evaluate serves it)
        baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, 42 + number).fit(
            pooled[rows["train"]], y[rows["train"]], pooled[rows["val"]], y[rows["val"]])
        classifier = fit_patch_classifier(patches[rows["train"]], y[rows["train"]], evaluate, 42 + number) \
            if evaluate.patch_classifier else None
        out.append({"backbone": backbone, "test": rows["test"], "rest": rest, "val_rows": rows["val"],
                    "split_val": val, "split_test": test, "fold_stack": stack_payload,
                    "synthetic": synthetic_scores,
                    "oof": oof, "inner_fold": inner_fold,
                    "weights": BaselineWeights.of(baseline, backbone).to_payload(),
                    "patch_classifier": classifier.to_payload(grid_of(patches)) if classifier
                    else None,
                    "ensemble_test": {name: np.mean(parts, axis=0) for name, parts in inner_test.items()}})
        print(f"outer fold {number}: {time.perf_counter() - start:.0f} s; test AUROC split / ensemble: " + ", ".join(
            f"{name} {metrics_at_threshold(y[rows['test']], test[name], 0.5)['auroc']:.3f} / "
            f"{metrics_at_threshold(y[rows['test']], out[-1]['ensemble_test'][name], 0.5)['auroc']:.3f}"
            for name in test if not np.isnan(test[name]).all())
            + (f", fold_stack {metrics_at_threshold(y[rows['test']], out[-1]['ensemble_test']['fold_stack'], 0.5)['auroc']:.3f}"
               if stack_payload else ""), flush=True)
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
               "patch_classifier": "patch_classifier_score", "stack": "stack_score", "fold_stack": "fold_stack_score"}
    if not cross_validated:
        columns.pop("fold_stack", None)  # made by the cross-validation only
    columns = {name: column for name, column in columns.items() if name in fold["split_val"]}
    rows = np.concatenate([fold["val_rows"], fold["test"]])
    evaluation = pd.DataFrame({"path": [f"image_{row}" for row in rows], "target": y[rows],
                               "split": ["val"] * len(fold["val_rows"]) + ["test"] * len(fold["test"])})
    held_out = pd.DataFrame({"path": [f"rest_{i}" for i in range(len(fold["rest"]))], "split": "train",
                             "target": y[fold["rest"]], "fold": fold["inner_fold"]})
    for name, column in columns.items():
        test = fold["ensemble_test"][name] if name == "fold_stack" else fold["split_test"][name]
        evaluation[column] = np.concatenate([fold["split_val"][name], test])
        held_out[column] = fold["oof"][name]
    return choose_operating_point(evaluation, stand_in_checkpoint(fold["backbone"]), evaluate,
                                  held_out if cross_validated else pd.DataFrame(),
                                  scorer_models={"baseline": fold["weights"], "patch_classifier": fold["patch_classifier"],
                                                 "fold_stack": fold["fold_stack"] if cross_validated else None})


def _figures(targets: np.ndarray, scores: np.ndarray, threshold: float, target: float, candidate: str) -> dict:
    """Test recall, precision and AUROC at ``threshold``, the oracle recall on the same scores and the efficiency."""
    measured = metrics_at_threshold(targets, scores, threshold)
    oracle = oracle_recall(targets, scores, target)
    return {"recall": measured["recall"], "precision": measured["precision"], "auroc": measured["auroc"],
            "oracle": oracle, "efficiency": recall_efficiency(measured["recall"], oracle), "candidate": candidate}


def measure(fold: dict, name: str, arm: str, rule: tuple[str, float], y: np.ndarray, evaluate: EvaluateConfig) -> dict:
    """One candidate, arm and rule on one outer fold: test recall and precision at the chosen threshold
    (``best of a+b``: the candidate of :func:`chosen` among a and b), the oracle recall and the efficiency."""
    evaluate = replace(evaluate, rule=rule[0], bound_level=rule[1], out_of_fold_bound_level=rule[1])
    if name.startswith("pipeline auto"):  # what evaluate would serve, threshold and all, on the served model's scores
        cross_validated = name == "pipeline auto"
        point = pipeline_choice(fold, y, evaluate, cross_validated)
        # evaluate serves the patch classifier as the mean of its cross-validation fold fits, and the fold stack as
        # the stack of them; otherwise the split fits
        ensemble = cross_validated and point["candidate"] in ("patch_classifier", "fold_stack")
        served = fold["ensemble_test" if ensemble else "split_test"][point["candidate"]]
        figures = _figures(y[fold["test"]], served, point["threshold"], evaluate.target_precision,
                           f"{point['candidate']}@{point['threshold_chosen_on']}")
        dead = np.isin(fold["test"], fold.get("dead_rows", []))
        figures["dead_accepted"], figures["dead"] = int((served[dead] >= point["threshold"]).sum()), int(dead.sum())
        if point["candidate"] == "fold_stack" and fold.get("synthetic") is not None:
            figures["global_accepted"] = int((fold["synthetic"]["score"] >= point["threshold"]).sum())
            figures["global"] = len(fold["synthetic"]["score"])
        return figures
    if name.startswith("best of "):
        name = chosen(fold, tuple(name.removeprefix("best of ").split("+")), arm, y)
    if arm == "split":
        chosen_on, chosen_scores, tested = y[fold["val_rows"]], fold["split_val"][name], fold["split_test"][name]
    else:
        usable = ~np.isnan(fold["oof"][name])
        chosen_on, chosen_scores = y[fold["rest"]][usable], fold["oof"][name][usable]
        tested = fold["split_test"][name] if arm == "oof -> split model" else fold["ensemble_test"][name]
    threshold = select_threshold(chosen_on, chosen_scores, evaluate.rule, evaluate.rule_settings)["threshold"]
    return _figures(y[fold["test"]], tested, threshold, evaluate.target_precision, name)


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=harness.DEFECTS_DEV)
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--cache", type=Path, default=harness.DEFECTS_DEV_CACHE)
    parser.add_argument("--quick", action="store_true", help="2 outer folds, 2 inner, 3 epochs")
    parser.add_argument("--global-defects", type=int, default=10,
                        help="good test cells per outer fold made into each global defect (0: none)")
    parser.add_argument("--fold-stack-patch-gaussian", choices=["true", "false"],
                        help="evaluate.fold_stack_patch_gaussian (default: the project's): the fold stack's third input")
    parser.add_argument("--positional", choices=["true", "false"],
                        help="evaluate.patch_classifier_positional (default: the project's), to compare both")
    args = parser.parse_args(argv)
    harness.quiet_progress()
    if args.quick:
        args.outer, args.inner, args.epochs = 2, 2, 3
    manifest, y, groups = harness.defects_dev(args.data)
    torch.set_num_threads(args.threads)
    feats = harness.defects_dev_features(manifest, args.data, args.backbone, 14, args.cache)
    evaluate = EvaluateConfig(target_precision=args.target)
    if args.fold_stack_patch_gaussian:
        evaluate = replace(evaluate, fold_stack_patch_gaussian=args.fold_stack_patch_gaussian == "true")
    if args.positional:
        evaluate = replace(evaluate, patch_classifier_positional=args.positional == "true")
    start = time.perf_counter()
    synthetic = global_defect_features(manifest, args.data, y, groups, args.outer, args.global_defects,
                                       args.backbone) if args.global_defects else None
    folds = nested_scores(feats, y, groups, args.outer, args.inner, TrainConfig(epochs=args.epochs), evaluate,
                          args.backbone, synthetic)
    dead = dead_cells(manifest, args.data)
    print(f"dead cells (mean grey level under {DEAD_GREY_LEVEL:.0%} of full scale): "
          f"{', '.join(manifest['path'].iloc[dead])}")
    for fold in folds:
        fold["dead_rows"] = dead
    print(f"\n{args.data.name}, {args.backbone}: {args.outer} outer grouped folds, {args.inner} inner, "
          f"target precision {args.target}, patch classifier positional {evaluate.patch_classifier_positional}, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'candidate':28s} {'arm':20s} {'rule':16s} {'test AUROC':>14s} {'test recall':>14s} {'test precision':>15s} "
          f"{'min prec':>8s} {'prec>=t':>7s} {'oracle recall':>14s} {'efficiency':>14s}")

    def mean_sd(values) -> str:
        values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        if np.isnan(values).all():
            return "n/a"
        spread = np.nanstd(values, ddof=1) if np.sum(~np.isnan(values)) > 1 else 0.0
        return f"{np.nanmean(values):.3f} +- {spread:.3f}"

    names = [n for n in NAMES if n in folds[0]["oof"] and not np.isnan(folds[0]["oof"][n]).all()]
    served = [name for name in ("fold_stack", *OTHER_STACK.values()) if name in folds[0]["oof"]]
    results = []
    for name in (*names, *served, "best of " + "+".join(names), "best of model+baseline", "pipeline auto", NO_CV):
        arms = ("as evaluate serves it",) if name.startswith("pipeline auto") else \
            (SERVED_ONLY,) if name in served else ARMS
        for arm in arms:
            for rule in RULES:
                rows = [measure(fold, name, "oof -> ensemble" if arm == SERVED_ONLY else arm, rule, y, evaluate)
                        for fold in folds]
                precisions = np.array([np.nan if r["precision"] is None else r["precision"] for r in rows], float)
                held = int(np.sum(np.nan_to_num(precisions, nan=0.0) >= args.target))
                note = ""
                if name.startswith("best of "):
                    note = f"  ({', '.join(r['candidate'] for r in rows)})"
                elif name.startswith("pipeline"):  # per fold, what is served and the recall it keeps
                    note = "  (" + ", ".join(f"{r['candidate']} recall {r['recall']:.3f} of {r['oracle']:.3f}"
                                             for r in rows) + ")"
                    note += (f"; dead cells accepted {sum(r['dead_accepted'] for r in rows)} of "
                             f"{sum(r['dead'] for r in rows)}")
                    if all("global" in r for r in rows):
                        note += (f"; global defects ({', '.join(GLOBAL_DEFECTS)}) accepted "
                                 f"{sum(r['global_accepted'] for r in rows)} of {sum(r['global'] for r in rows)}")
                rule_name = rule[0] if rule[0] == "point" else f"{rule[0]} {rule[1]:.2f}"
                print(f"{name:28s} {arm:20s} {rule_name:16s} {mean_sd([r['auroc'] for r in rows]):>14s} "
                      f"{mean_sd([r['recall'] for r in rows]):>14s} {mean_sd(precisions):>15s} "
                      f"{np.nanmin(precisions) if not np.isnan(precisions).all() else np.nan:8.3f} {held:>4d}/{len(rows)} {mean_sd([r['oracle'] for r in rows]):>14s} "
                      f"{mean_sd([r['efficiency'] for r in rows]):>14s}{note}", flush=True)
                results += [{"arm": f"{name} | {arm} | {rule_name}", "fold": number, "served": row["candidate"],
                             **{key: value for key, value in row.items() if key != "candidate"}}
                            for number, row in enumerate(rows)]
    harness.write_results(args.results_file, "oof_threshold", results, args)


if __name__ == "__main__":
    main()
