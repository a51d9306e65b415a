"""Quality on small, grouped inspection data: every candidate score over grouped folds, side by side.

On ../shared/datasets/defects-dev (1,665 solar-cell photos, good = valid, defective = invalid,
``group`` = module and near-twins) the images are cut into ``--folds`` grouped, stratified folds
(scikit-learn's StratifiedGroupKFold, seed 42): each fold is the test set once. The rest is split
again by group, three parts train to one part validation. This is the pipeline's own cross-validation
(``image_classification.candidates.cross_validate``, what evaluate runs on small data), fed by one pass
of the frozen backbone over the files (the pipeline's ``extract_backbone_features``, with patches):

- ``model``     the original head (the project's ``fit``, cached 4x4 inputs, early stopping on validation);
- ``baseline``  the project's LogisticBaseline on pooled features (C chosen on validation);
- ``patch``     the PatchCore-style patch score (``image_classification.patches``), memory from the
                valid training images;
- ``patch_classifier``  supervised patch evidence (``PatchClassifier``): a small network over the
                same patch vectors, trained on the train images' labels, each image scored by its
                most defective patches; ``patch_classifier, positional`` (or ``, one mean``)
                is the same with the other setting of ``evaluate.patch_classifier_positional``
                (each patch read against the train images' mean patch at its own place, or
                one mean for every place), printed beside it;
- ``stack``     logistic regression over the other four scores, fitted on the validation split (its
                own validation scores, for the threshold, are cross-fitted over validation groups);
- ``chosen``    per fold, whichever of the five has the best validation average precision;
- ``fine_tuned``  with ``--fine-tune N``: the project's train node fine-tuning the backbone's last N
                blocks and the head end to end on the fold's train images (``train.augment``: each
                ``--augment`` setting is its own row), early stopping on its validation images, then
                the score stage's pass over the files. It is slow on a CPU (~20 s per epoch here).

Per candidate it prints mean +- sd over folds of test AUROC and AP (valid = positive class), the
oracle recall (the best any threshold reaches at the target on the fold's test scores) and,
for each threshold rule (``point`` and ``lower_bound``, chosen on validation), the test recall, its recall
efficiency (recall / oracle, per fold) and in
how many folds test precision reached the target. Nothing is tuned on a test fold.

    python -m benchmarks.defects_quality                  # 5 folds, 30 epochs, both rules (~6 min on 2 cores)
    python -m benchmarks.defects_quality --quick          # 2 folds, 3 epochs: a smoke run
    python -m benchmarks.defects_quality --fine-tune 2 --augment none inspection   # + fine-tuning (~35 min)
    python -m benchmarks.defects_quality --fine-tune 9 --augment inspection --schedule one_cycle \
        --backbone-lr 3e-4 --fine-tune-epochs 15        # the whole backbone, 15 epochs per fold (~80 min)

The features are cached in --cache (default /tmp/defects_quality_features.safetensors) and reused
when they match the backbone, grid and file list.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import harness
from benchmarks.harness import NAMES, cross_validate, fit_patch_classifier, fold_figures, grouped_folds
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.parameters.train import TrainConfig
from image_classification.pipelines.score.nodes import score_index
from image_classification.pipelines.train.nodes import extract_features, train_classifier
from image_classification.training import NoResume

RULES = ("point", "lower_bound")


def fine_tuned_scores(manifest: pd.DataFrame, root: Path, backbone: str, blocks: int, augment: str, epochs: int,
                      folds: int, threads: int, schedule: str = "constant", backbone_lr: float = 1.5e-4,
                      input_size: int | None = None) -> list[dict[str, np.ndarray]]:
    """Per fold (the same grouped folds as cross_validate), the validation and test scores of the
    model the train node fine-tunes on that fold's train images, as the pipeline would with
    ``train.trainable_blocks``, ``train.augment``, ``train.schedule``, ``train.backbone_learning_rate``
    and ``model.input_size``. Under ``one_cycle`` every epoch of the schedule runs (no early stop: the
    rate only anneals at the end) and the best validation epoch is kept, as the train node does."""
    y = (manifest["label"] == "valid").to_numpy().astype(int)
    index = pd.DataFrame({"path": [str(root / p) for p in manifest["path"]], "label": manifest["label"],
                          "kind": manifest["kind"], "split": "train", "split_group": manifest["group"],
                          "group": manifest["group"], "sha256": manifest["sha256"], "phash": "", "width": 0, "height": 0})
    index["target"] = pd.array(y, dtype="Int8")
    model = ModelConfig(backbone=backbone, weights="imagenet", head_input="pooled", input_size=input_size)
    runtime = {"device": "cpu", "threads": threads, "batch_size": 64, "workers": 2, "backend": "auto",
               "parity_tolerance": 1e-4, "dask": None}
    features = extract_features(index, model, runtime, 42, TrainConfig(patch_grid=0))
    train = TrainConfig(epochs=epochs, trainable_blocks=blocks, augment=augment, schedule=schedule,
                        patience=None if schedule == "one_cycle" else max(2, epochs // 2),
                        backbone_learning_rate=backbone_lr, workers=2, patch_grid=0)
    out = []
    for number, rows in enumerate(grouped_folds(y, manifest["group"].to_numpy(), folds, seed=42)):
        start = time.perf_counter()
        split = np.full(len(index), "train", dtype=object)
        split[rows["val"]], split[rows["test"]] = "val", "test"
        fold_index = index.assign(split=split)
        checkpoint, history = train_classifier(features, fold_index, model, train, runtime, 42 + number, NoResume())
        score = score_index(checkpoint, features, fold_index, runtime)["tensors"]["score"].numpy()
        out.append({"val": score[rows["val"]], "test": score[rows["test"]]})
        print(f"fine-tuned ({blocks} blocks, augment {augment}, {schedule}) fold {number}: {len(history)} epochs, "
              f"best {checkpoint['metadata']['best_epoch']}, {time.perf_counter() - start:.0f} s, test AUROC "
              f"{roc_auc_score(y[rows['test']], out[-1]['test']):.3f}", flush=True)
    return out


def add_candidate(report: dict, name: str, scores: list[dict[str, np.ndarray]], y: np.ndarray, groups: np.ndarray,
                  evaluate: EvaluateConfig) -> None:
    """One more candidate in every fold of a cross_validate report, thresholded and measured the same way."""
    for fold, rows, fold_scores in zip(report["folds"], grouped_folds(y, groups, len(scores), seed=42), scores):
        fold["candidates"][name] = fold_figures(y[rows["val"]], fold_scores["val"], y[rows["test"]], fold_scores["test"],
                                                evaluate)


def chosen_row(report: dict) -> list[dict]:
    """Per fold, the figures of the candidate with the best validation AP on that fold."""
    return [max((c for name, c in fold["candidates"].items() if name in NAMES), key=lambda c: c["val_average_precision"])
            for fold in report["folds"]]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=harness.DEFECTS_DEV)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=harness.DEFECTS_DEV_CACHE)
    parser.add_argument("--quick", action="store_true", help="2 folds, 3 epochs")
    parser.add_argument("--no-means-row", action="store_true",
                        help="leave out the patch classifier with the other setting of "
                             "evaluate.patch_classifier_positional (the row beside the default)")
    parser.add_argument("--fine-tune", type=int, default=0, metavar="BLOCKS",
                        help="also fine-tune the backbone's last BLOCKS blocks per fold (train.trainable_blocks)")
    parser.add_argument("--augment", nargs="+", default=["inspection"], help="train.augment settings to fine-tune with")
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--schedule", default="constant",
                        help="train.schedule for fine-tuning (one_cycle: no early stop)")
    parser.add_argument("--backbone-lr", type=float, default=1.5e-4,
                        help="train.backbone_learning_rate for fine-tuning")
    parser.add_argument("--input-size", type=int, default=None, help="model.input_size for fine-tuning (px)")
    args = parser.parse_args(argv)
    if args.quick:
        args.folds, args.epochs = 2, 3
    manifest, y, groups = harness.defects_dev(args.data)
    torch.set_num_threads(args.threads)
    feats = harness.defects_dev_features(manifest, args.data, args.backbone, args.grid, args.cache)
    train = TrainConfig(epochs=args.epochs)
    reports = {}
    for rule in RULES:  # the head is retrained per rule: same seed, same scores, a clean separation of the two
        start = time.perf_counter()
        evaluate = EvaluateConfig(target_precision=args.target, rule=rule)
        reports[rule] = cross_validate(feats["head_input"], feats["pooled"].float().numpy(), feats["patches"], y,
                                       groups, args.folds, train, evaluate, seed=42, fine_patches=feats["fine_patches"])
        print(f"rule {rule}: {time.perf_counter() - start:.0f} s; per-fold test AUROC: " + "; ".join(
            name + " " + " ".join(f"{f['candidates'][name]['test_auroc']:.3f}" for f in reports[rule]["folds"])
            for name in reports[rule]["summary"]), flush=True)
    extra = []
    if not args.no_means_row:  # the patch classifier with the other means setting, on the same folds and seeds
        other = EvaluateConfig(target_precision=args.target,
                               patch_classifier_positional=not EvaluateConfig().patch_classifier_positional)
        name, scores = f"patch_classifier, {'positional' if other.patch_classifier_positional else 'one mean'}", []
        for number, rows in enumerate(grouped_folds(y, groups, args.folds, seed=42)):
            fit = fit_patch_classifier(feats["patches"][rows["train"]], y[rows["train"]], other, 42 + number)
            scores.append({split: fit.scores(feats["patches"][rows[split]]) for split in ("val", "test")})
        for rule in RULES:
            add_candidate(reports[rule], name, scores, y, groups,
                          EvaluateConfig(target_precision=args.target, rule=rule))
        print(f"{name}: per-fold test AUROC " + " ".join(
            f"{f['candidates'][name]['test_auroc']:.3f}" for f in reports["point"]["folds"]), flush=True)
        extra.append(name)
    for augment in args.augment if args.fine_tune else []:
        name = f"fine_tuned {args.fine_tune}b {augment}"
        name += "" if args.schedule == "constant" else f" {args.schedule}"
        scores = fine_tuned_scores(manifest, args.data, args.backbone, args.fine_tune, augment,
                                   3 if args.quick else args.fine_tune_epochs, args.folds, args.threads,
                                   args.schedule, args.backbone_lr, args.input_size)
        for rule in RULES:
            add_candidate(reports[rule], name, scores, y, groups, EvaluateConfig(target_precision=args.target, rule=rule))
        print(f"{name}: per-fold test AUROC " + " ".join(
            f"{f['candidates'][name]['test_auroc']:.3f}" for f in reports["point"]["folds"]), flush=True)
        extra.append(name)
    print(f"\n{args.data.name}, {args.backbone}, {args.folds} grouped folds, target precision {args.target}")
    width = max([26, *(len(name) + 1 for name in extra)])
    header = f"{'candidate':{width}s} {'val AP':>14s} {'test AUROC':>14s} {'test AP':>14s}"
    header += f" {'oracle recall':>14s}"
    for rule in RULES:
        header += f" | {rule + ' recall':>20s} {'efficiency':>14s} {'prec>=t':>7s} {'prec min':>8s}"
    print(header)

    def mean_sd(values) -> str:
        values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        finite = values[~np.isnan(values)]
        if not len(finite):
            return "n/a"
        return f"{finite.mean():.3f} +- {finite.std(ddof=1) if len(finite) > 1 else 0:.3f}"

    results = []
    for name in (*reports["point"]["summary"], "chosen", *extra):
        rows = {rule: chosen_row(reports[rule]) if name == "chosen" else
                [f["candidates"][name] for f in reports[rule]["folds"]] for rule in RULES}
        first = rows["point"]
        line = (f"{name:{width}s} {mean_sd([r['val_average_precision'] for r in first]):>14s} "
                f"{mean_sd([r['test_auroc'] for r in first]):>14s} {mean_sd([r['test_average_precision'] for r in first]):>14s}"
                f" {mean_sd([r['test_oracle_recall'] for r in first]):>14s}")
        for rule in RULES:
            precisions = np.array([np.nan if r["test_precision"] is None else r["test_precision"] for r in rows[rule]])
            held = sum(r["target_precision_held"] for r in rows[rule])
            line += (f" | {mean_sd([r['test_recall'] for r in rows[rule]]):>20s} "
                     f"{mean_sd([r['test_recall_efficiency'] for r in rows[rule]]):>14s} {f'{held}/{len(precisions)}':>7s} "
                     f"{np.nanmin(precisions):8.3f}")
        print(line)
        results += [{"arm": f"{name}, {rule}", "fold": fold, **figures}
                    for rule in RULES for fold, figures in enumerate(rows[rule])]
    harness.write_results(args.results_file, "defects_quality", results, args)


if __name__ == "__main__":
    main()
