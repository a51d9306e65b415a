"""Other scores for near unseen kinds: do any separate frog and horse better than kNN on the pooled features?

Decision 0027 asked it with scratch measurements on one run's feature cache; this benchmark asks it
over five split seeds on cifar10-dev (vehicles valid, four animals invalid, frog and horse the near
unseen kinds, as ``--env cifar10_dev``; data_prep's own split per seed), with no head trained: every
score is fitted on the training split's labelled images and measured as the near AUROC of frog and
horse against the labelled test images (higher: more unlike the training images), the far AUROC
(the demo's textures, digits and photo crops) beside it. The arms:

- ``knn_pooled``        zero_shot's kNN (k = 5) on the L2-normalised pooled features (the reference);
- ``knn_head_grid``     the same on the head's 4 x 4 input grid, flattened;
- ``knn_pca_whitened N``  kNN in the normalised pooled features' PCA-whitened space, N components;
  ``knn_pca_whitened_renormalised N`` the same with zero_shot's kNN, which normalises it again;
- ``knn_imagenet_logits``, ``knn_imagenet_sqrt_softmax``, ``imagenet_kl_to_train_mean``,
  ``imagenet_cross_entropy_to_train_mean``  the backbone's own ImageNet output (its classifier on the
  pooled features): kNN on the logits or the square-root probabilities, and how far an image's class
  distribution is from the training images' mean one;
- ``lof_pooled``        local outlier factor (20 neighbours) on the normalised pooled features;
- ``class_relative_knn``  per labelled class, the k-th neighbour's distance among that class's
  training images over the class's own median k-th neighbour distance; an image's score is the
  smallest ratio over the classes;
- with ``--patches``: ``knn_patch_mean`` (the patch vectors of evaluate's patch evidence, the mid-level
  stride-8 and stride-16 maps, averaged over the grid) and ``knn_patch_mean_and_pooled`` (both
  normalised, side by side);
- with ``--input-sizes``: ``knn_pooled`` at each input size the 32 px photos are upscaled to.

    python -m benchmarks.near_unseen_scores           # 5 seeds, the frozen features (~3 min on 2 cores)
    python -m benchmarks.near_unseen_scores --patches --input-sizes 64 96 128 160   # every arm (~8 min;
        # 224 px, the backbone's own size, is the reference row)

The backbone features are cached as open_world caches them (``--cache``; patches and other input
sizes in files beside it).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.preprocessing import normalize

from benchmarks import harness
from benchmarks.harness import KNNDetector, separation_metrics

NEAR, FAR = ("frog", "horse"), ("digit", "photo", "texture")
K = 5
PCA_COMPONENTS = (32, 64, 128, 256)


def knn_scores(train: np.ndarray, other: np.ndarray) -> np.ndarray:
    """zero_shot's kNN detector: the k-th nearest training image's distance after L2 normalisation."""
    return KNNDetector(k=K).fit(train, np.zeros(len(train))).score_samples(other)


def pca_whitened_scores(train: np.ndarray, other: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-th nearest training image's distance in the normalised features' PCA-whitened space (each
    component scaled to unit variance: a Mahalanobis-like distance), and the same by zero_shot's kNN,
    which L2-normalises it again (decision 0027's scratch measurement; it drops the distance along the
    whitened components that tells an outlier). One PCA fit serves both."""
    pca = PCA(n_components=components, whiten=True, random_state=harness.SEED).fit(normalize(train))
    train, other = pca.transform(normalize(train)), pca.transform(normalize(other))
    whitened = NearestNeighbors(n_neighbors=K).fit(train).kneighbors(other)[0][:, -1]
    return whitened, knn_scores(train, other)


def imagenet_scores(train: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from the backbone's own 1000-class ImageNet output on the pooled features (its classifier's
    input): kNN on the logits and on the square-root class probabilities, and each image's distribution's
    KL divergence from, and cross-entropy against, the training images' mean distribution."""
    def probabilities(logits: np.ndarray) -> np.ndarray:
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    mean = probabilities(train).mean(axis=0)
    p = probabilities(other)
    return {"knn_imagenet_logits": knn_scores(train, other),
            "knn_imagenet_sqrt_softmax": knn_scores(np.sqrt(probabilities(train)), np.sqrt(p)),
            "imagenet_kl_to_train_mean": np.sum(p * (np.log(p + 1e-12) - np.log(mean + 1e-12)), axis=1),
            "imagenet_cross_entropy_to_train_mean": -np.sum(mean * np.log(p + 1e-12), axis=1)}


def lof_scores(train: np.ndarray, other: np.ndarray) -> np.ndarray:
    lof = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(normalize(train))
    return -lof.score_samples(normalize(other))


def class_relative_scores(train: np.ndarray, classes: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The smallest, over the training classes, k-th neighbour distance to the class over its own spread
    (the median distance of its training images to their own k-th neighbour, themselves left out)."""
    train, other = normalize(train), normalize(other)
    ratios = []
    for name in np.unique(classes):
        members = train[classes == name]
        index = NearestNeighbors(n_neighbors=K + 1).fit(members)
        spread = np.median(index.kneighbors(members)[0][:, K])  # column 0 is the image itself
        ratios.append(index.kneighbors(other, n_neighbors=K)[0][:, -1] / spread)
    return np.min(ratios, axis=0)


def arm_scores(features: dict[str, np.ndarray], train: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Every arm's score of every image (higher: more unlike the training images); ``features`` by
    name, one row per image; ``train`` the training images' mask, ``classes`` their fine classes."""
    pooled = features["pooled"]
    scores = {"knn_pooled": knn_scores(pooled[train], pooled)}
    if "head_grid" in features:
        scores["knn_head_grid"] = knn_scores(features["head_grid"][train], features["head_grid"])
    for components in PCA_COMPONENTS:
        if components < min(train.sum(), pooled.shape[1]):
            (scores[f"knn_pca_whitened {components}"],
             scores[f"knn_pca_whitened_renormalised {components}"]) = pca_whitened_scores(pooled[train], pooled,
                                                                                         components)
    scores["lof_pooled"] = lof_scores(pooled[train], pooled)
    scores["class_relative_knn"] = class_relative_scores(pooled[train], classes, pooled)
    if "imagenet_logits" in features:
        scores |= imagenet_scores(features["imagenet_logits"][train], features["imagenet_logits"])
    if "patch_mean" in features:
        both = np.hstack([normalize(features["patch_mean"]), normalize(pooled)])
        scores["knn_patch_mean"] = knn_scores(features["patch_mean"][train], features["patch_mean"])
        scores["knn_patch_mean_and_pooled"] = knn_scores(both[train], both)
    return scores


def separation(scores: np.ndarray, index: pd.DataFrame) -> dict[str, float]:
    """Near and far AUROC against the labelled test images (NaN where the index has none of those kinds)."""
    test = scores[(index["split"] == "test").to_numpy()]
    unseen = {"near_auroc": index["kind"].isin(NEAR).to_numpy(), "far_auroc": index["kind"].isin(FAR).to_numpy()}
    return {name: separation_metrics(test, scores[rows])["auroc"] if rows.any() else float("nan")
            for name, rows in unseen.items()}


def features_at(index: pd.DataFrame, params: dict, cache: Path, input_size: int | None = None,
                patches: bool = False) -> dict[str, np.ndarray]:
    """The frozen backbone's features of every image: pooled, the head's grid flattened and, with
    ``patches``, the patch vectors averaged over the grid (the train stage's extraction, cached)."""
    from image_classification.backbones import imagenet_classifier
    from image_classification.parameters.shared import ModelConfig
    from image_classification.parameters.train import TrainConfig
    from image_classification.pipelines.train.nodes import extract_features

    model = ModelConfig(**params["model"] | {"input_size": input_size})
    runtime = dict(params["runtime"]) | {"dask": None}
    train = TrainConfig(**params["train"])
    if not patches:
        tensors = harness.cifar10_dev_features(index, model, runtime, train, cache)["tensors"]
        with torch.inference_mode():  # the ImageNet classifier's last layer reads the pooled features
            logits = imagenet_classifier(model.backbone).classifier[-1](tensors["pooled"].float())
        return {"pooled": tensors["pooled"].float().numpy(), "imagenet_logits": logits.numpy(),
                "head_grid": tensors["head_input"].flatten(1).float().numpy()}
    images = hashlib.sha256("\n".join(index["sha256"]).encode()).hexdigest()[:16]
    key = f"{model.backbone}|{model.spec.input_size} px|patch grid {train.patch_grid}, mean|{len(index)} images {images}"

    def extract() -> dict:
        payload = extract_features(index, model, runtime, 0, train)
        return {"tensors": {"patch_mean": payload["tensors"]["patches"].float().mean(dim=1)}, "metadata": {}}

    return {"patch_mean": harness.feature_cache(cache, key, extract)["tensors"]["patch_mean"].numpy()}


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--cache", type=Path, default=harness.CIFAR10_DEV_CACHE)
    parser.add_argument("--patches", action="store_true", help="also the patch-vector arms (one more extraction)")
    parser.add_argument("--input-sizes", type=int, nargs="*", default=[], metavar="PX",
                        help="also knn_pooled with the photos upscaled to each of these sizes (one extraction each)")
    args = parser.parse_args(argv)
    harness.quiet_progress()
    if not harness.CIFAR10_DEV.is_dir():
        raise SystemExit(f"{harness.CIFAR10_DEV} is missing: this benchmark needs the cifar10-dev images")
    params = harness.cifar10_dev_parameters()
    start, rows, features = time.perf_counter(), [], None
    sizes = {size: None for size in args.input_sizes}
    for seed, index in harness.cifar10_dev_splits(params, args.seeds):
        if features is None:  # the same images in the same order for every seed: extract once
            features = features_at(index, params, args.cache)
            if args.patches:
                features |= features_at(index, params, args.cache.with_name(args.cache.stem + "_patches.safetensors"),
                                        patches=True)
            for size in sizes:
                sizes[size] = features_at(index, params, args.cache.with_name(f"{args.cache.stem}_{size}px.safetensors"),
                                          input_size=size)["pooled"]
        train = (index["split"] == "train").to_numpy()  # labelled: unseen kinds have their own split
        classes = index.loc[train, "kind"].to_numpy()
        scores = arm_scores(features, train, classes)
        scores |= {f"knn_pooled {size} px": knn_scores(pooled[train], pooled) for size, pooled in sizes.items()}
        rows += [{"arm": arm, "fold": seed, **separation(values, index)} for arm, values in scores.items()]
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("arm", sort=False)[["near_auroc", "far_auroc"]].agg(["mean", "std"])
    print(f"\ncifar10-dev, split seeds {args.seeds}; AUROC against the labelled test images, mean +- sd over seeds:\n")
    print("| score | near AUROC | far AUROC |\n|---|---|---|")
    for arm, row in summary.iterrows():
        print(f"| {arm} | " + " | ".join(f"{row[(c, 'mean')]:.3f} +- {row[(c, 'std')]:.3f}"
                                          for c in ("near_auroc", "far_auroc")) + " |")
    harness.write_results(args.results_file, "near_unseen_scores", rows, args)


if __name__ == "__main__":
    main()
