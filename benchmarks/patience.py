"""How long the head trains against what it learns: ``train.patience`` side by side on both dev sets.

With a frozen backbone the head trains on cached features, and its 30 epochs of the original head's
1280x1280 convolution are the largest single cost of a whole run left after fast extraction. Early
stopping ends training after ``train.patience`` epochs without a better validation score and keeps
the best epoch's weights. This benchmark measures what a shorter patience saves and what it costs,
through the project's own code, with thresholds chosen on validation and nothing tuned on test:

- cifar10-dev (``--env cifar10_dev``: vehicles valid, four animals invalid), five split seeds of
  data_prep's own split: the train node (``train_classifier``) on one cached pass of the frozen
  backbone, the score stage, evaluate's ``choose_operating_point``, measured on that seed's test split;
- defects-dev (1,665 solar-cell photos), the five grouped, stratified folds of the pipeline's
  cross-validation (``candidates.grouped_folds``): the head trained by ``candidates.fit_head``, as
  cross-validation trains it, its threshold chosen on validation, measured on the fold.

Per data set and patience it prints mean +- sd of the training time, the epochs run, the best epoch,
test AUROC, recall and precision, and in how many splits test precision reached the target; then
per split, whether each patience kept the same best epoch as the longest one.

    python -m benchmarks.patience                      # patience 10, 5, 3 (~25 min on 2 cores after extraction)
    python -m benchmarks.patience --patience 10 5 --quick   # 2 seeds and folds: a smoke run

Features are cached as open_world and defects_quality cache them (same files, same keys).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks import harness
from benchmarks.harness import fit_head, fold_figures, grouped_folds, head_outputs
from image_classification.metrics import metrics_at_threshold
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.parameters.train import TrainConfig
from image_classification.pipelines.evaluate.nodes import choose_operating_point, score_images
from image_classification.pipelines.score.nodes import score_index
from image_classification.pipelines.train.nodes import train_classifier
from image_classification.training import NoResume


def cifar_rows(seeds: list[int], patiences: list[int | None], cache: Path) -> list[dict]:
    """Per split seed and patience: the train node's time and epochs, and the head's test figures."""
    params = harness.cifar10_dev_parameters()
    model = ModelConfig(**params["model"])
    runtime = dict(params["runtime"]) | {"dask": None}
    evaluate = EvaluateConfig(**{**params["evaluate"], "operating_candidate": "model"})  # the head's threshold
    rows = []
    for seed, index in harness.cifar10_dev_splits(params, seeds):
        for patience in patiences:
            train = TrainConfig(**{**params["train"], "patience": patience})
            features = harness.cifar10_dev_features(index, model, runtime, train, cache)
            start = time.perf_counter()
            checkpoint, history = train_classifier(features, index, model, train, runtime, seed, NoResume())
            seconds = time.perf_counter() - start
            evaluated = score_images(score_index(checkpoint, features, index, runtime), checkpoint, index)
            tested = evaluated[evaluated["split"] == "test"]
            point = choose_operating_point(evaluated, checkpoint, evaluate)
            measured = metrics_at_threshold(tested["target"].to_numpy(int), tested["score"].to_numpy(),
                                            point["threshold"])
            rows.append({"data": "cifar10-dev (split seeds)", "split": seed, "patience": patience, "seconds": seconds,
                         "epochs": len(history), "best_epoch": checkpoint["metadata"]["best_epoch"],
                         "auroc": measured["auroc"], "recall": measured["recall"],
                         "precision": measured["precision"]})
        print(f"cifar10-dev seed {seed} done", flush=True)
    return rows


def defects_rows(folds: int, patiences: list[int | None], cache: Path) -> list[dict]:
    """Per grouped fold and patience: the head's training time and epochs, and its test figures."""
    manifest, targets, _ = harness.defects_dev()
    head_input = harness.defects_dev_features(manifest, harness.DEFECTS_DEV, "efficientnet_lite0", 14, cache)["head_input"]
    evaluate, rows = EvaluateConfig(), []
    for number, split_rows in enumerate(grouped_folds(targets, manifest["group"].to_numpy(), folds, seed=42)):
        seed = 42 + number  # as candidates.cross_validate seeds each fold
        for patience in patiences:
            start = time.perf_counter()
            head, history, best_epoch = fit_head(head_input, split_rows, targets, TrainConfig(patience=patience), seed)
            seconds = time.perf_counter() - start
            val, test = (head_outputs(head, head_input[split_rows[s]], torch.device("cpu"))[1] for s in ("val", "test"))
            figures = fold_figures(targets[split_rows["val"]], val, targets[split_rows["test"]], test, evaluate)
            rows.append({"data": "defects-dev (grouped folds)", "split": number, "patience": patience,
                         "seconds": seconds, "epochs": len(history), "best_epoch": best_epoch,
                         "auroc": figures["test_auroc"], "recall": figures["test_recall"],
                         "precision": figures["test_precision"]})
        print(f"defects-dev fold {number} done", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--patience", type=lambda v: None if v == "none" else int(v), nargs="+", default=[10, 5, 3],
                        help="patience values to compare, the first one the reference ('none': no early stopping)")
    parser.add_argument("--quick", action="store_true", help="2 seeds and folds")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--cifar-cache", type=Path, default=harness.CIFAR10_DEV_CACHE)
    parser.add_argument("--defects-cache", type=Path, default=harness.DEFECTS_DEV_CACHE)
    args = parser.parse_args(argv)
    harness.quiet_progress()
    for data in (harness.CIFAR10_DEV, harness.DEFECTS_DEV):
        if not data.is_dir():
            raise SystemExit(f"{data} is missing: this benchmark needs both dev sets in ../shared/datasets")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    splits = 2 if args.quick else 5
    frame = pd.DataFrame(cifar_rows([42, 1, 2, 3, 4][:splits], args.patience, args.cifar_cache)
                         + defects_rows(splits, args.patience, args.defects_cache))
    frame["patience"] = frame["patience"].astype(object).where(frame["patience"].notna(), "none")
    frame["held"] = frame["precision"] >= args.target
    reference = frame[frame["patience"] == frame["patience"].iloc[0]].set_index(["data", "split"])["best_epoch"]
    frame["same_best_epoch"] = [reference[(d, s)] == b for d, s, b in zip(frame["data"], frame["split"],
                                                                         frame["best_epoch"])]
    print(f"\nThe head trained with each patience (target precision {args.target}; thresholds chosen on validation):\n")
    print("| data | patience | training s | epochs run | best epoch | test AUROC | test recall | test precision | "
          f"precision >= target | best epoch as patience {frame['patience'].iloc[0]} |\n|---|---|---|---|---|---|---|---|---|---|")
    for (data, patience), group in frame.groupby(["data", "patience"], sort=False):
        cell = lambda c, f=".3f": f"{group[c].mean():{f}} +- {group[c].std(ddof=1):{f}}"  # noqa: E731
        print(f"| {data} | {patience} | {cell('seconds', '.1f')} | {cell('epochs', '.1f')} | {cell('best_epoch', '.1f')} | "
              f"{cell('auroc', '.4f')} | {cell('recall')} | {cell('precision')} | {int(group['held'].sum())}/{len(group)} | "
              f"{int(group['same_best_epoch'].sum())}/{len(group)} |")
    totals = frame.groupby(["data", "patience"], sort=False)["seconds"].sum().unstack("patience")
    print("\nTotal training seconds, and the ratio to the first patience:\n")
    for data, row in totals.iterrows():
        print(f"  {data}: " + ", ".join(f"patience {p} {s:.0f} s ({row.iloc[0] / s:.2f}x)" for p, s in row.items()))
    print("\nPer split:\n" + frame.round(4).to_string(index=False))
    harness.write_results(args.results_file, "patience", [
        {"arm": f"{row['data']}, patience {row['patience']}", "fold": row["split"],
         **{key: value for key, value in row.items() if key not in ("data", "patience", "split")}}
        for row in frame.to_dict("records")], args)


if __name__ == "__main__":
    main()
