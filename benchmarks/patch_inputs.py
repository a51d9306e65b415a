"""What the patch classifier reads, and other ways to score patches, on defects-dev's grouped folds.

Every arm is fitted on a fold's train rows (validation rows only where a logistic regression chooses its
C there) and printed as mean +- sd of test and validation AUROC over folds x fit seeds, with the per-fold
test AUROC and how many (fold, seed) pairs it ranks better than the reference, side by side in one run.
The arms (decisions 0011, 0012, 0020 and 0031 recorded them first as scratch runs):

- ``one mean`` (the reference): the project's ``PatchClassifier``, one mean and one scale per channel;
- ``positional``: each grid position standardised by its own mean (``patch_classifier_positional``);
  ``positional beside one mean``: both standardisations concatenated, one classifier;
- ``template, N nearest valid``: each patch less the mean patch, at its place, of the N valid train
  images nearest in pooled features (an image is never its own neighbour); ``template, k-means K``:
  less the mean valid patches of its cluster of the pooled features;
- ``minus the image's mean patch`` (to cancel a module's brightness), alone and ``with raw beside``;
- ``logistic regression per patch``: every train patch labelled as its image, C chosen on validation,
  an image scored by the mean of its 10 highest patch logits, in place of the network;
- ``network on the head's 4x4 grid``: the same classifier on the 16 cells of 1280-d final features;
- ``three fits averaged``: the mean image logit of three fits of the reference (seeds 3s, 3s+1, 3s+2);
- ``global memory`` (evaluate's PatchCore-style memory) and ``position-aware memory`` (each patch
  against the valid train patches at its own place +- 1 cell, every one kept);
- ``channel summary``: mean, max, min and sd of each channel over the grid, evaluate's logistic
  baseline (C chosen on validation), alone and ``+ pooled``; ``pooled minus module median``: each
  image's pooled features less the median of its module's images, alone and ``+ raw``;
- with ``--with-backbone``: that backbone's reference classifier alone, and ``both backbones
  averaged`` (the mean of the two classifiers' image logits).

    python -m benchmarks.patch_inputs                           # ~20 min on 2 cores, after the extraction
    python -m benchmarks.patch_inputs --fold-seeds 1 2 --arms "one mean" positional
    python -m benchmarks.patch_inputs --backbone efficientnet_lite2 --cache /tmp/dq_lite2.safetensors \\
        --with-backbone efficientnet_lite0 --arms "one mean" positional
    python -m benchmarks.patch_inputs --grid 28 --cache /tmp/dq_grid28.safetensors --arms "one mean"

Choose on the validation column; nothing here looks at a test fold to choose.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from benchmarks import harness
from benchmarks.harness import grouped_folds
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.patches import PatchClassifier, PatchMemory
from image_classification.scorers.baseline import LogisticBaseline

REFERENCE = "one mean"
LOGISTIC_C = (0.01, 0.1, 1.0)
PATCH_TOP_K = 10  # the patch classifier's default top_k, used by the per-patch logistic regression


class Fold:
    """One fold's rows and the features the arms read; fits the arms share are kept here."""

    def __init__(self, features: dict, y: np.ndarray, groups: np.ndarray, rows: dict[str, np.ndarray],
                 cell_types: np.ndarray | None = None) -> None:
        self.features, self.y, self.groups, self.cell_types = features, y, groups, cell_types
        self.train, self.val, self.test = rows["train"], rows["val"], rows["test"]
        self.scored = np.r_[self.val, self.test]
        self.notes: dict[str, float] = {}  # figures an arm reports beside its scores
        self._fits: dict = {}

    def patches(self, name: str = "patches") -> torch.Tensor:
        return self.features[name]

    def floats(self) -> torch.Tensor:
        """The patch vectors as float32, converted once per fold (the arms that transform them share it)."""
        if "floats" not in self._fits:
            self._fits["floats"] = self.patches().float()
        return self._fits["floats"]

    def classifier(self, seed: int, name: str = "patches") -> PatchClassifier:
        """The reference fit on ``name``'s patch vectors, fitted once per seed."""
        if (name, seed) not in self._fits:
            patches = self.patches(name)
            self._fits[name, seed] = PatchClassifier.fit(patches[self.train], self.y[self.train], seed=seed)
        return self._fits[name, seed]

    def network(self, inputs: torch.Tensor, seed: int, **options) -> np.ndarray:
        """Scores of validation and test rows by a patch classifier fitted on ``inputs``' train rows."""
        fitted = PatchClassifier.fit(inputs[self.train], self.y[self.train], seed=seed, **options)
        return fitted.scores(inputs[self.scored])

    def logistic(self, features: np.ndarray) -> np.ndarray:
        """Evaluate's logistic baseline on ``features`` (C chosen on validation); validation and test scores."""
        evaluate = EvaluateConfig()
        baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, harness.SEED).fit(
            features[self.train], self.y[self.train], features[self.val], self.y[self.val])
        return baseline.score_samples(features[self.scored])


def templates_nearest(fold: Fold, neighbours: int) -> torch.Tensor:
    """Per image, the mean patches of the ``neighbours`` valid train images nearest in pooled features."""
    pooled = torch.nn.functional.normalize(fold.features["pooled"].float(), dim=1)
    valid = fold.train[fold.y[fold.train] == 1]
    distances = torch.cdist(pooled, pooled[valid])
    distances[torch.as_tensor(valid), torch.arange(len(valid))] = float("inf")  # never one's own neighbour
    nearest = valid[distances.topk(neighbours, dim=1, largest=False).indices.numpy()]
    patches = fold.patches()
    return torch.stack([patches[row].float().mean(0) for row in nearest])


def templates_kmeans(fold: Fold, clusters: int, seed: int) -> torch.Tensor:
    """Per image, the mean patches of the valid train images of its k-means cluster of pooled features."""
    pooled = fold.features["pooled"].float().numpy()
    kmeans = KMeans(clusters, n_init=10, random_state=seed).fit(pooled[fold.train])
    assigned, patches = kmeans.predict(pooled), fold.patches()
    if fold.cell_types is not None:  # how far the clusters are the cell types (mono, poly)
        types, clusters_of = fold.cell_types[fold.train], assigned[fold.train]
        fold.notes["cell type purity"] = sum(Counter(types[clusters_of == c]).most_common(1)[0][1]
                                             for c in np.unique(clusters_of)) / len(types)
    valid = fold.train[fold.y[fold.train] == 1]
    every = patches[valid].float().mean(0)  # for a cluster without valid train images
    means = torch.stack([patches[valid[assigned[valid] == c]].float().mean(0) if (assigned[valid] == c).any()
                         else every for c in range(clusters)])
    return means[torch.as_tensor(assigned)]


def positional_beside(fold: Fold, seed: int) -> np.ndarray:
    patches = fold.floats()
    mean = patches[fold.train].mean(0)
    return fold.network(torch.cat([patches, patches - mean], 2), seed)


def logistic_per_patch(fold: Fold, seed: int) -> np.ndarray:
    patches = fold.floats().numpy()
    flat = lambda rows: patches[rows].reshape(-1, patches.shape[-1])  # noqa: E731
    scaler = StandardScaler().fit(flat(fold.train))
    invalid = np.repeat(1 - fold.y[fold.train], patches.shape[1])

    def image_scores(model: LogisticRegression, rows: np.ndarray) -> np.ndarray:
        logits = model.decision_function(scaler.transform(flat(rows))).reshape(len(rows), -1)
        return -np.sort(logits, axis=1)[:, -PATCH_TOP_K:].mean(1)

    fits = [LogisticRegression(C=c, class_weight="balanced", max_iter=300, random_state=seed).fit(
        scaler.transform(flat(fold.train)), invalid) for c in LOGISTIC_C]
    best = max(fits, key=lambda model: roc_auc_score(fold.y[fold.val], image_scores(model, fold.val)))
    return image_scores(best, fold.scored)


def position_memory(fold: Fold, seed: int) -> np.ndarray:
    """Minus the mean of the ``patch_top_k`` largest distances of an image's patches to the valid train
    patches within one cell of their own place."""
    patches = fold.floats()
    side = int(round(patches.shape[1] ** 0.5))
    bank, query = patches[fold.train[fold.y[fold.train] == 1]], patches[fold.scored]
    distances = torch.empty(len(query), patches.shape[1])
    for place in range(patches.shape[1]):
        row, column = divmod(place, side)
        near = [r * side + c for r in range(max(0, row - 1), min(side, row + 2))
                for c in range(max(0, column - 1), min(side, column + 2))]
        distances[:, place] = torch.cdist(query[:, place], bank[:, near].reshape(-1, bank.shape[-1])).amin(1)
    return -distances.topk(EvaluateConfig().patch_top_k, dim=1).values.mean(1).numpy()


def global_memory(fold: Fold, seed: int) -> np.ndarray:
    evaluate, patches = EvaluateConfig(), fold.patches()
    memory = PatchMemory.fit(patches[fold.train[fold.y[fold.train] == 1]], evaluate.patch_coreset_fraction,
                             evaluate.patch_memory_max, evaluate.patch_top_k, harness.SEED)
    return -memory.anomaly_scores(patches[fold.scored])


def averaged(fold: Fold, seeds: list[int], names: list[str]) -> np.ndarray:
    """Minus the mean image logit of the reference fits of ``seeds`` x ``names``."""
    logits = [fold.classifier(seed, name).image_logits(fold.classifier(seed, name).patch_logits(
        fold.patches(name)[fold.scored])) for seed in seeds for name in names]
    return -torch.stack(logits).mean(0).numpy()


def summary(patches: torch.Tensor) -> np.ndarray:
    patches = patches.float()
    return torch.cat([patches.mean(1), patches.amax(1), patches.amin(1), patches.std(1)], 1).numpy()


def module_median(features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(features)
    for group in np.unique(groups):
        rows = groups == group
        out[rows] = features[rows] - np.median(features[rows], axis=0)
    return out


ARMS: dict[str, Callable[[Fold, int], np.ndarray]] = {
    REFERENCE: lambda f, s: f.classifier(s).scores(f.patches()[f.scored]),
    "positional": lambda f, s: f.network(f.patches(), s, positional=True),
    "positional beside one mean": positional_beside,
    "template, 5 nearest valid": lambda f, s: f.network(f.floats() - templates_nearest(f, 5), s),
    "template, 20 nearest valid": lambda f, s: f.network(f.floats() - templates_nearest(f, 20), s),
    "template, k-means 2": lambda f, s: f.network(f.floats() - templates_kmeans(f, 2, s), s),
    "template, k-means 4": lambda f, s: f.network(f.floats() - templates_kmeans(f, 4, s), s),
    "minus the image's mean patch": lambda f, s: f.network(
        f.floats() - f.floats().mean(1, keepdim=True), s),
    "minus the image's mean patch, with raw beside": lambda f, s: f.network(
        torch.cat([f.floats(), f.floats() - f.floats().mean(1, keepdim=True)], 2), s),
    "logistic regression per patch": logistic_per_patch,
    "network on the head's 4x4 grid": lambda f, s: f.network(f.features["head_grid"], s),
    "three fits averaged": lambda f, s: averaged(f, [3 * s, 3 * s + 1, 3 * s + 2], ["patches"]),
    "global memory": global_memory,
    "position-aware memory": position_memory,
    "channel summary": lambda f, s: f.logistic(summary(f.patches())),
    "channel summary + pooled": lambda f, s: f.logistic(
        np.c_[summary(f.patches()), f.features["pooled"].float().numpy()]),
    "pooled minus module median": lambda f, s: f.logistic(
        module_median(f.features["pooled"].float().numpy(), f.groups)),
    "pooled minus module median + raw": lambda f, s: f.logistic(
        np.c_[module_median(f.features["pooled"].float().numpy(), f.groups), f.features["pooled"].float().numpy()]),
}
WITH_BACKBONE = {"the other backbone alone": lambda f, s: f.classifier(s, "other").scores(f.patches("other")[f.scored]),
                 "both backbones averaged": lambda f, s: averaged(f, [s], ["patches", "other"])}
SEEDLESS = ("global memory", "position-aware memory", "channel summary", "channel summary + pooled",
            "pooled minus module median", "pooled minus module median + raw")  # one fit per fold: the seed changes nothing


def features_of(manifest, backbone: str, grid: int, cache: Path | None) -> dict:
    default = grid == 14 and backbone == "efficientnet_lite0"
    cache = cache or (harness.DEFECTS_DEV_CACHE if default else Path(f"/tmp/patch_inputs_{backbone}_{grid}.safetensors"))
    tensors = harness.defects_dev_features(manifest, harness.DEFECTS_DEV, backbone, grid, cache)
    return {"patches": tensors["patches"], "pooled": tensors["pooled"],
            "head_grid": tensors["head_input"].flatten(2).transpose(1, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0], raw=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seeds", type=int, nargs="+", default=[harness.SEED],
                        help="the grouped folds' seeds (each gives --folds folds)")
    parser.add_argument("--fit-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-folds", type=int, help="stop after this many folds of each fold seed")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--cache", type=Path, help="the feature cache (default: defects_quality's for Lite0 at 14)")
    parser.add_argument("--with-backbone", help="also that backbone's reference and both backbones averaged")
    parser.add_argument("--with-cache", type=Path, help="the --with-backbone feature cache")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    parser.add_argument("--arms", nargs="+", choices=[*ARMS, *WITH_BACKBONE], metavar="ARM",
                        help="the arms, by their printed names (default all; the reference is always run)")
    args = parser.parse_args(argv)
    manifest, y, groups = harness.defects_dev()
    cell_types = manifest["kind"].str.rsplit("-", n=1).str[-1].to_numpy()  # defect-mono, good-poly, ...
    torch.set_num_threads(args.threads)
    features = features_of(manifest, args.backbone, args.grid, args.cache)
    arms = {name: arm for name, arm in ARMS.items() if args.arms is None or name in args.arms or name == REFERENCE}
    if args.with_backbone:
        features["other"] = features_of(manifest, args.with_backbone, args.grid, args.with_cache)["patches"]
        arms |= {name: arm for name, arm in WITH_BACKBONE.items() if args.arms is None or name in args.arms}
    results, start = [], time.perf_counter()
    for fold_seed in args.fold_seeds:
        for number, rows in enumerate(grouped_folds(y, groups, args.folds, seed=fold_seed)):
            if args.max_folds is not None and number >= args.max_folds:
                break
            fold = Fold(features, y, groups, rows, cell_types)
            for name, arm in arms.items():
                for seed in args.fit_seeds[:1] if name in SEEDLESS else args.fit_seeds:
                    scores = arm(fold, seed)
                    results.append({"arm": name, "fold": f"{fold_seed}/{number}", "fit_seed": seed,
                                    "test_auroc": roc_auc_score(y[fold.test], scores[len(fold.val):]),
                                    "val_auroc": roc_auc_score(y[fold.val], scores[:len(fold.val)]), **fold.notes})
                    fold.notes = {}
            print(f"fold seed {fold_seed}, fold {number + 1} of {args.folds} done "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    report(results, args)
    harness.write_results(args.results_file, "patch_inputs", results, args)


def report(results: list[dict], args) -> None:
    frame = pd.DataFrame(results)
    reference = frame[frame["arm"] == REFERENCE].groupby("fold")["test_auroc"].mean()
    print(f"\ndefects-dev, {args.backbone} patches (grid {args.grid}), {args.folds} grouped folds of fold seeds "
          f"{args.fold_seeds}, fit seeds {args.fit_seeds}; the reference is '{REFERENCE}'\n")
    if "cell type purity" in frame:
        purity = frame.groupby("arm", sort=False)["cell type purity"].mean().dropna()
        print("k-means clusters of the train images' pooled features: the share of images of their cluster's most "
              "common cell type (mono or poly), mean over folds: " + ", ".join(f"{a} {v:.2f}" for a, v in purity.items()))
    print("| arm | test AUROC | val AUROC | per-fold test AUROC | folds above the reference |\n|---|---|---|---|---|")
    for arm, rows in frame.groupby("arm", sort=False):
        per_fold = rows.groupby("fold", sort=False)["test_auroc"].mean()
        above = int((per_fold > reference.loc[per_fold.index] + 5e-4).sum())
        print(f"| {arm} | {rows['test_auroc'].mean():.3f} +- {rows['test_auroc'].std(ddof=1):.3f} | "
              f"{rows['val_auroc'].mean():.3f} +- {rows['val_auroc'].std(ddof=1):.3f} | "
              f"{' '.join(f'{v:.3f}' for v in per_fold)} | {above}/{len(per_fold)} |")


if __name__ == "__main__":
    main()
