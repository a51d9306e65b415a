"""Open world: how well each anomaly detector keeps unseen kinds out, over five split seeds.

On ../shared/datasets/cifar10-dev (vehicles valid, four animals invalid, as ``--env cifar10_dev``)
frog and horse are the near unseen kinds, the demo's textures, digits and photo crops the far ones.
Per split seed (data_prep's own split of the same images) it runs the project's nodes: the train
node's head on one cached pass of the frozen backbone, the score stage, evaluate's operating point
(chosen on validation) and zero_shot's detectors (fitted on training images, thresholds on validation
images). Two heads are trained per seed:

- ``binary``  the valid/invalid head alone (``train.fine_class_weight: 0``, the default);
- ``fine``    the same head with the auxiliary fine-class output (``train.fine_class_weight: 1``).

For every head and detector it prints mean +- sd over the seeds of the near AUROC (frog and horse
against the in-distribution test images) and the far AUROC, the fused detector once per fusion rule
(``zero_shot.fusion``: fisher, mean); then, with that detector as the flag and each calibration of
its threshold (``zero_shot.calibrate_on`` x ``zero_shot.target_tpr``: the share of all validation
images, or of the valid ones the classifier accepts, that the flag keeps), the share of near and far
images accepted as valid, the share of valid test images the flag costs, and the precision of
everything accepted, closed set and with unseen kinds at 10% of the images
(``zero_shot.unseen_share``). The row marked (before) is the flag before the open-world work:
knn_pooled on the binary head, 95% of validation images; the default now is the binary head with the
fused flag (fisher) keeping 98% of the accepted valid validation images.

    python -m benchmarks.open_world                 # 5 seeds, 30 epochs (~8 min on 2 cores)
    python -m benchmarks.open_world --quick         # 2 seeds, 3 epochs: a smoke run
    python -m benchmarks.open_world --seeds 42 --heads fine --fine-tune 1   # the last backbone block
        # fine-tuned (train.trainable_blocks, augment flip) with the fine-class output (~5 min per seed on 2 cores)
    python -m benchmarks.open_world --seeds 42 --heads fine --fine-tune 9 --input-size 128 --augment photo \
        --schedule one_cycle --backbone-lr 3e-4 --patience none --epochs 15 --cache /tmp/ow128.safetensors
        # the whole backbone, at 128 px (model.input_size), one-cycle rates (~10 min per seed)
    python -m benchmarks.open_world --backbone efficientnet_lite2 --cache /tmp/ow_lite2.safetensors
        # EfficientNet-Lite2's features (model.backbone) in place of Lite0's (~9 min)

The backbone features are cached in --cache (default /tmp/open_world_features.safetensors).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from benchmarks import harness
from benchmarks.harness import FAR, FUSIONS, NEAR, calibrate_threshold, separation_metrics
from image_classification.operating_point import OperatingPoint
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.parameters.train import TrainConfig
from image_classification.parameters.zero_shot import ZeroShotConfig
from image_classification.pipelines.evaluate.nodes import choose_operating_point, score_images
from image_classification.pipelines.score.nodes import score_index
from image_classification.pipelines.train.nodes import train_classifier
from image_classification.pipelines.zero_shot.nodes import (
    calibration_images,
    decide_images,
    measure_detectors,
    score_anomalies,
)
from image_classification.training import NoResume

BASELINE = ("binary", "knn_pooled", "validation 0.95")
CLASSIFIER = ["test_auroc", "test_recall", "test_precision"]


CALIBRATIONS = (("validation", 0.95), ("validation", 0.97), ("accepted_valid", 0.95), ("accepted_valid", 0.97),
                ("accepted_valid", 0.98))
"""Flag calibrations compared: (``zero_shot.calibrate_on``, ``zero_shot.target_tpr``), the share of
all validation images, or of the valid ones the classifier accepts, that the flag keeps."""


def one_head(index: pd.DataFrame, features: dict, params: dict, model: ModelConfig, runtime: dict,
             train: TrainConfig, seed: int) -> list[dict]:
    """Train one head on this split; every detector's figures, and the decision with it as the flag
    under each calibration."""
    checkpoint, _ = train_classifier(features, index, model, train, runtime, seed, NoResume())
    scored = score_index(checkpoint, features, index, runtime)
    evaluated = score_images(scored, checkpoint, index)
    # the head's operating point: the open-world figures are the trained model's
    point = choose_operating_point(evaluated, checkpoint, EvaluateConfig(**{**params["evaluate"],
                                                                           "operating_candidate": "model"}))
    tested = evaluated[evaluated["split"] == "test"]
    called = tested["score"].to_numpy() >= point["threshold"]
    valid = tested["target"].to_numpy() == 1
    classifier = {"test_auroc": roc_auc_score(valid, tested["score"]), "test_recall": float(called[valid].mean()),
                  "test_precision": float(valid[called].mean())}
    config = ZeroShotConfig(**params["zero_shot"])
    rows = []
    # every detector with the configured fusion; then the fused detector with each other fusion
    runs = [(config, config.detector_names)] + [
        (dataclasses.replace(config, detectors=["knn", "fused"], flag_detector="fused", fusion=fusion), ["fused"])
        for fusion in FUSIONS if fusion != config.fusion]
    for run_config, names in runs:
        rows += detector_rows(run_config, names, scored, checkpoint, index, point, seed, classifier)
    return rows


def detector_rows(config: ZeroShotConfig, names: list[str], scored: dict, checkpoint: dict, index: pd.DataFrame,
                  point: dict, seed: int, classifier: dict) -> list[dict]:
    """score_anomalies with ``config``; each of ``names`` as the flag under every calibration."""
    table, _, _ = score_anomalies(scored, checkpoint, index, config, seed, point)
    test = table[table["split"] == "test"]
    rows = []
    for name in names:
        separation = {
            "near_auroc": separation_metrics(test[name].to_numpy(), table.loc[table["kind"].isin(NEAR), name].to_numpy())["auroc"],
            "far_auroc": separation_metrics(test[name].to_numpy(), table.loc[table["kind"].isin(FAR), name].to_numpy())["auroc"],
        }
        for calibrate_on, tpr in CALIBRATIONS:
            flagged = dataclasses.replace(config, flag_detector=name, target_tpr=tpr, calibrate_on=calibrate_on)
            calibration, _ = calibration_images(table, OperatingPoint.from_payload(point), flagged)
            thresholds = {other: calibrate_threshold(table.loc[calibration, other].to_numpy(), tpr)
                          for other in config.detector_names}
            decisions = decide_images(table, thresholds, point, flagged)
            metrics = measure_detectors(table, decisions, thresholds, point, flagged)
            rows.append(separation | classifier | {
                "detector": name if name != "fused" else f"fused ({config.fusion})",
                "calibration": f"{calibrate_on} {tpr:.2f}",
                "best_epoch": checkpoint["metadata"]["best_epoch"],
                "near_accepted": float(decisions.loc[decisions["kind"].isin(NEAR), "accepted_as_valid"].mean()),
                "far_accepted": float(decisions.loc[decisions["kind"].isin(FAR), "accepted_as_valid"].mean()),
                "valid_lost": metrics["valid_test_images_lost_by_combined_decision"],
                "precision_closed": metrics["precision"]["closed_set_combined"],
                "precision_open": metrics["precision"]["open_world_combined"],
            })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 3 epochs")
    parser.add_argument("--out", type=Path, help="also write every seed's figures to this CSV")
    parser.add_argument("--cache", type=Path, default=harness.CIFAR10_DEV_CACHE)
    parser.add_argument("--heads", nargs="+", choices=["binary", "fine"], default=["binary", "fine"])
    parser.add_argument("--fine-tune", type=int, default=0, metavar="BLOCKS",
                        help="fine-tune this many last backbone blocks (train.trainable_blocks) with --augment")
    parser.add_argument("--augment", default="flip", help="train.augment when fine-tuning (default flip)")
    parser.add_argument("--schedule", default="constant", help="train.schedule (default constant)")
    parser.add_argument("--backbone", help="model.backbone (default: the project's)")
    parser.add_argument("--input-size", type=int, help="model.input_size (default: the backbone's own)")
    parser.add_argument("--backbone-lr", type=float, help="train.backbone_learning_rate (default: the project's)")
    parser.add_argument("--patience", type=lambda v: None if v == "none" else int(v), default=5,
                        help="train.patience, or none (default 5)")
    parser.add_argument("--report", type=Path, help="print the report of a CSV that --out wrote, and stop")
    args = parser.parse_args(argv)
    harness.quiet_progress()
    if args.report:
        frame = pd.read_csv(args.report)
        report(frame, sorted(frame["seed"].unique().tolist()), args.epochs)
        return
    if not harness.CIFAR10_DEV.is_dir():
        raise SystemExit(f"{harness.CIFAR10_DEV} is missing: this benchmark needs the cifar10-dev images")
    seeds, epochs = (args.seeds[:2], 3) if args.quick else (args.seeds, args.epochs)
    logging.basicConfig(level=logging.WARNING)
    params = harness.cifar10_dev_parameters()
    model = ModelConfig(**params["model"] | {"input_size": args.input_size}
                        | ({"backbone": args.backbone} if args.backbone else {}))
    runtime = dict(params["runtime"]) | {"dask": None}
    train = TrainConfig(**{**params["train"], "epochs": epochs, "patience": args.patience, "schedule": args.schedule})
    if args.fine_tune:
        train = dataclasses.replace(train, trainable_blocks=args.fine_tune, augment=args.augment)
    if args.backbone_lr is not None:
        train = dataclasses.replace(train, backbone_learning_rate=args.backbone_lr)
    rows = []
    start = time.perf_counter()
    for seed, index in harness.cifar10_dev_splits(params, seeds):
        features = harness.cifar10_dev_features(index, model, runtime, train, args.cache)
        for head, weight in (("binary", 0.0), ("fine", 1.0)):
            if head not in args.heads:
                continue
            label = f"{head}, {args.fine_tune} block(s) fine-tuned" if args.fine_tune else head
            label += f", {model.spec.input_size} px" if args.input_size else ""
            label += f", {model.backbone}" if args.backbone else ""
            head_rows = one_head(index, features, params, model, runtime,
                                 dataclasses.replace(train, fine_class_weight=weight), seed)
            rows += [row | {"head": label, "seed": seed} for row in head_rows]
            print(f"seed {seed}, {label} head done ({time.perf_counter() - start:.0f} s)", flush=True)
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    report(frame, seeds, epochs)
    harness.write_results(args.results_file, "open_world", [
        {"arm": f"{row['head']} | {row['detector']} | {row['calibration']}", "fold": row["seed"],
         **{key: value for key, value in row.items() if key not in ("head", "detector", "calibration", "seed")}}
        for row in rows], args)


def report(frame: pd.DataFrame, seeds: list[int], epochs: int) -> None:
    separation = ["near_auroc", "far_auroc"]
    decision = ["near_accepted", "far_accepted", "valid_lost", "precision_closed", "precision_open"]
    cell = lambda row, c: f"{row[(c, 'mean')]:.3f} +- {row[(c, 'std')]:.3f}"  # noqa: E731
    print(f"cifar10-dev, {len(seeds)} split seeds {seeds}, {epochs} epochs; mean +- sd over seeds.")
    epochs_used = frame.groupby("head")["best_epoch"].agg(lambda s: sorted(set(s)))
    print("best epochs per head: " + "; ".join(f"{head} {values}" for head, values in epochs_used.items()))
    heads = frame.drop_duplicates(["head", "seed"]).groupby("head", sort=False)[CLASSIFIER].agg(["mean", "std"])
    print("\nThe classifier (valid/invalid) on the test images, threshold chosen on validation:\n")
    print("| head | " + " | ".join(CLASSIFIER) + " |\n|---|" + "---|" * len(CLASSIFIER))
    for head, row in heads.iterrows():
        print(f"| {head} | " + " | ".join(cell(row, c) for c in CLASSIFIER) + " |")
    print("\nSeparation (AUROC against the in-distribution test images):\n")
    summary = frame.groupby(["head", "detector"], sort=False)[separation].agg(["mean", "std"])
    print("| head | detector | " + " | ".join(separation) + " |\n|---|---|" + "---|" * len(separation))
    for (head, detector), row in summary.iterrows():
        marker = " (before)" if (head, detector) == BASELINE[:2] else ""
        print(f"| {head} | {detector}{marker} | " + " | ".join(cell(row, c) for c in separation) + " |")
    print("\nThe combined decision with the row's detector as the flag; precision_open: unseen kinds at 10% of "
          "the images, each kind equally often:\n")
    summary = frame.groupby(["head", "detector", "calibration"], sort=False)[decision].agg(["mean", "std"])
    print("| head | flag | calibration | " + " | ".join(decision) + " |\n|---|---|---|" + "---|" * len(decision))
    for (head, detector, calibration), row in summary.iterrows():
        marker = " (before)" if (head, detector, calibration) == BASELINE else ""
        print(f"| {head} | {detector} | {calibration}{marker} | " + " | ".join(cell(row, c) for c in decision) + " |")


if __name__ == "__main__":
    main()
