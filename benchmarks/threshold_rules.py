"""Which threshold rule keeps test precision at the target: ``point`` against ``lower_bound``, on both dev sets.

The operating point is chosen on validation and measured on test. A point estimate of validation
precision is optimistic on a few hundred images; ``lower_bound`` asks the one-sided confidence bound
to reach the target instead (``evaluate.bound_method``, ``evaluate.bound_level``). This benchmark
measures what each rule buys and costs, through the project's own nodes and nothing tuned on test:

- cifar10-dev (``--env cifar10_dev``: vehicles valid, four animals invalid), five split seeds of
  data_prep's own split: the train node's head on one cached pass of the frozen backbone, the score
  stage, then evaluate's ``choose_operating_point`` under each rule, measured on that seed's test split;
- defects-dev (1,665 solar-cell photos), five grouped, stratified folds of the pipeline's
  cross-validation (``candidates.cross_validate``, the head on cached features), under each rule.

Per data set and rule it prints mean +- sd of test recall and precision, the lowest test precision,
in how many splits test precision reached the target (0.90), the oracle recall (the best any threshold
reaches at the target on the same test scores) and the recall efficiency (test recall / oracle).

    python -m benchmarks.threshold_rules            # ~15 min on 2 cores after feature extraction
    python -m benchmarks.threshold_rules --quick    # 2 seeds/folds, 3 epochs: a smoke run

Features are cached as open_world and defects_quality cache them (same files, same keys).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import harness
from benchmarks.harness import cross_validate
from image_classification.metrics import metrics_at_threshold, oracle_recall, recall_efficiency
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.parameters.train import TrainConfig
from image_classification.pipelines.evaluate.nodes import choose_operating_point, score_images
from image_classification.pipelines.score.nodes import score_index
from image_classification.pipelines.train.nodes import train_classifier
from image_classification.training import NoResume

RULES = ("point", "lower_bound")


def cifar_rows(seeds: list[int], epochs: int, cache: Path, rules: tuple[str, ...] = RULES) -> list[dict]:
    """Per split seed and rule, the head's test recall and precision at the threshold chosen on validation."""
    params = harness.cifar10_dev_parameters()
    model = ModelConfig(**params["model"])
    runtime = dict(params["runtime"]) | {"dask": None}
    train = TrainConfig(**{**params["train"], "epochs": epochs})
    rows = []
    for seed, index in harness.cifar10_dev_splits(params, seeds):
        features = harness.cifar10_dev_features(index, model, runtime, train, cache)
        checkpoint, _ = train_classifier(features, index, model, train, runtime, seed, NoResume())
        evaluated = score_images(score_index(checkpoint, features, index, runtime), checkpoint, index)
        tested = evaluated[evaluated["split"] == "test"]
        for rule in rules:
            # the head's operating point, whichever score evaluate would serve
            evaluate = EvaluateConfig(**{**params["evaluate"], "rule": rule, "operating_candidate": "model"})
            point = choose_operating_point(evaluated, checkpoint, evaluate)
            targets, scores = tested["target"].to_numpy(int), tested["score"].to_numpy()
            measured = metrics_at_threshold(targets, scores, point["threshold"])
            oracle = oracle_recall(targets, scores, evaluate.target_precision)
            rows.append({"data": "cifar10-dev (split seeds)", "split": seed, "rule": rule,
                         "recall": measured["recall"], "precision": measured["precision"], "oracle": oracle,
                         "efficiency": recall_efficiency(measured["recall"], oracle)})
        print(f"cifar10-dev seed {seed} done", flush=True)
    return rows


def defects_rows(folds: int, epochs: int, cache: Path, rules: tuple[str, ...] = RULES) -> list[dict]:
    """Per grouped fold and rule, the head's test recall and precision at the threshold chosen on validation."""
    manifest, y, _ = harness.defects_dev()
    feats = harness.defects_dev_features(manifest, harness.DEFECTS_DEV, "efficientnet_lite0", 14, cache)
    rows = []
    for rule in rules:
        report = cross_validate(feats["head_input"], feats["pooled"].float().numpy(), None, y,
                                manifest["group"].to_numpy(), folds, TrainConfig(epochs=epochs),
                                EvaluateConfig(rule=rule), seed=42)
        rows += [{"data": "defects-dev (grouped folds)", "split": fold["fold"], "rule": rule,
                  "recall": fold["candidates"]["model"]["test_recall"],
                  "precision": fold["candidates"]["model"]["test_precision"],
                  "oracle": fold["candidates"]["model"]["test_oracle_recall"],
                  "efficiency": fold["candidates"]["model"]["test_recall_efficiency"]} for fold in report["folds"]]
        print(f"defects-dev rule {rule} done", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--quick", action="store_true", help="2 seeds and folds, 3 epochs")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES), help="evaluate.rule arms (default both)")
    parser.add_argument("--cifar-cache", type=Path, default=harness.CIFAR10_DEV_CACHE)
    parser.add_argument("--defects-cache", type=Path, default=harness.DEFECTS_DEV_CACHE)
    args = parser.parse_args(argv)
    harness.quiet_progress()
    for data in (harness.CIFAR10_DEV, harness.DEFECTS_DEV):
        if not data.is_dir():
            raise SystemExit(f"{data} is missing: this benchmark needs both dev sets in ../shared/datasets")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    splits, epochs = (2, 3) if args.quick else (5, 30)
    rows = (cifar_rows([42, 1, 2, 3, 4][:splits], epochs, args.cifar_cache, args.rules)
            + defects_rows(splits, epochs, args.defects_cache, args.rules))
    frame = pd.DataFrame(rows)
    frame["held"] = frame["precision"] >= args.target
    print(f"\nThe head's test figures at the threshold each rule chooses on validation (target precision {args.target}):\n")
    print("| data | rule | test recall | test precision | lowest precision | precision >= target | oracle recall | "
          "recall efficiency |\n|---|---|---|---|---|---|---|---|")
    frame["efficiency"] = frame["efficiency"].astype(float)
    for (data, rule), group in frame.groupby(["data", "rule"], sort=False):
        cell = lambda c: f"{group[c].mean():.3f} +- {group[c].std(ddof=1):.3f}"  # noqa: E731
        print(f"| {data} | {rule} | {cell('recall')} | {cell('precision')} | {np.nanmin(group['precision']):.3f} | "
              f"{int(group['held'].sum())}/{len(group)} | {cell('oracle')} | {cell('efficiency')} |")
    print("\nPer split:\n" + frame.round(3).to_string(index=False))
    harness.write_results(args.results_file, "threshold_rules", [
        {"arm": f"{row['data']}, {row['rule']}", "fold": row["split"],
         **{key: value for key, value in row.items() if key not in ("data", "rule", "split")}}
        for row in frame.to_dict("records")], args)


if __name__ == "__main__":
    main()
