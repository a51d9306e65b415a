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
- ``logistic_energy C=c``, ``logistic_max_logit C=c``  a logistic regression over the training split's
  fine classes (the eight known kinds; standardised pooled features, as the evaluate stage's baseline)
  for C in 0.3 1 3 10: minus the log-sum-exp of its logits (the energy) or minus the largest logit; its
  validation accuracy (the val split's fine classes) beside them;
- with ``--with-backbone NAME``: ``knn_both_backbones_standardised_sum`` (each backbone's kNN distance
  over the mean and sd of its training images' own k-th neighbour distances, the two summed) and
  ``knn_both_backbones_concatenated`` (both backbones' normalised pooled features side by side);
- with ``--patches``: ``knn_patch_mean`` (the patch vectors of evaluate's patch evidence, the mid-level
  stride-8 and stride-16 maps, averaged over the grid) and ``knn_patch_mean_and_pooled`` (both
  normalised, side by side);
- with ``--input-sizes``: ``knn_pooled`` at each input size the 32 px photos are upscaled to.

    python -m benchmarks.near_unseen_scores           # 5 seeds, the frozen features (~3 min on 2 cores)
    python -m benchmarks.near_unseen_scores --patches --input-sizes 64 96 128 160   # every arm (~8 min;
        # 224 px, the backbone's own size, is the reference row)
    python -m benchmarks.near_unseen_scores --backbone efficientnet_lite2 --with-backbone efficientnet_lite0
        # Lite2's features (decision 0012; one more extraction, 5,160 images at 260 px), Lite0's beside them

The backbone features are cached as open_world caches them (``--cache``, by default
/tmp/open_world_features.safetensors for the project's backbone and /tmp/open_world_features_NAME.safetensors
for another; patches and other input sizes in files beside it; ``--with-backbone``'s at its default path).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from benchmarks import harness
from benchmarks.harness import K, knn_scores, separation

PCA_COMPONENTS = (32, 64, 128, 256)
LOGISTIC_C = (0.3, 1, 3, 10)


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


def standardised_knn_scores(train: np.ndarray, other: np.ndarray) -> np.ndarray:
    """zero_shot's kNN distance over the mean and sd of the training images' own k-th neighbour
    distances (themselves left out), so that two backbones' distances can be summed."""
    train, other = normalize(train), normalize(other)
    index = NearestNeighbors(n_neighbors=K + 1).fit(train)
    own = index.kneighbors(train)[0][:, K]  # column 0 is the image itself
    return (index.kneighbors(other, n_neighbors=K)[0][:, -1] - own.mean()) / own.std()


def logistic_scores(train: np.ndarray, classes: np.ndarray, other: np.ndarray, c: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A logistic regression over the fine classes (standardised features, balanced class weights, as
    the evaluate stage's baseline): every image's energy score (minus the log-sum-exp of the logits),
    max-logit score (minus the largest logit) and predicted class."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                               random_state=harness.SEED)).fit(train, classes)
    logits = model.decision_function(other)
    if logits.ndim == 1:  # two classes: one logit z, the multinomial form's (-z/2, z/2) (energy shifts with them)
        logits = np.column_stack([-logits / 2, logits / 2])
    return -logsumexp(logits, axis=1), -logits.max(axis=1), model.classes_[logits.argmax(axis=1)]


def arm_scores(features: dict[str, np.ndarray], train: np.ndarray, classes: np.ndarray,
               predicted: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every arm's score of every image (higher: more unlike the training images); ``features`` by
    name, one row per image (``with_pooled``: a second backbone's pooled features); ``train`` the
    training images' mask, ``classes`` their fine classes. ``predicted``, where given, receives each
    logistic regression's predicted class of every image (by the arms' name without the score)."""
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
    for c in LOGISTIC_C:
        (scores[f"logistic_energy C={c:g}"], scores[f"logistic_max_logit C={c:g}"],
         classified) = logistic_scores(pooled[train], classes, pooled, c)
        if predicted is not None:
            predicted[f"C={c:g}"] = classified
    if "with_pooled" in features:
        other = features["with_pooled"]
        scores["knn_both_backbones_standardised_sum"] = (standardised_knn_scores(pooled[train], pooled)
                                                         + standardised_knn_scores(other[train], other))
        both = np.hstack([normalize(pooled), normalize(other)])
        scores["knn_both_backbones_concatenated"] = knn_scores(both[train], both)
    if "imagenet_logits" in features:
        scores |= imagenet_scores(features["imagenet_logits"][train], features["imagenet_logits"])
    if "patch_mean" in features:
        both = np.hstack([normalize(features["patch_mean"]), normalize(pooled)])
        scores["knn_patch_mean"] = knn_scores(features["patch_mean"][train], features["patch_mean"])
        scores["knn_patch_mean_and_pooled"] = knn_scores(both[train], both)
    return scores


def default_cache(backbone: str, params: dict) -> Path:
    """open_world's cache for the project's backbone; a file beside it, named after it, for another."""
    if backbone == params["model"]["backbone"]:
        return harness.CIFAR10_DEV_CACHE
    return harness.CIFAR10_DEV_CACHE.with_name(f"{harness.CIFAR10_DEV_CACHE.stem}_{backbone}.safetensors")


def features_at(index: pd.DataFrame, params: dict, cache: Path, input_size: int | None = None,
                patches: bool = False, backbone: str | None = None) -> dict[str, np.ndarray]:
    """The frozen backbone's features of every image: pooled, the head's grid flattened and, with
    ``patches``, the patch vectors averaged over the grid (the train stage's extraction, cached)."""
    from image_classification.backbones import imagenet_classifier
    from image_classification.parameters.shared import ModelConfig
    from image_classification.parameters.train import TrainConfig
    from image_classification.pipelines.train.nodes import extract_features

    model = ModelConfig(**params["model"] | {"input_size": input_size}
                        | ({"backbone": backbone} if backbone else {}))
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
    parser.add_argument("--backbone", help="model.backbone (default: the project's, efficientnet_lite0)")
    parser.add_argument("--cache", type=Path, help="the backbone's feature cache (default: open_world's for the "
                        "project's backbone, /tmp/open_world_features_BACKBONE.safetensors for another)")
    parser.add_argument("--with-backbone", metavar="NAME",
                        help="also the arms of kNN on this backbone's pooled features beside --backbone's "
                             "(its features at its default cache path)")
    parser.add_argument("--patches", action="store_true", help="also the patch-vector arms (one more extraction)")
    parser.add_argument("--input-sizes", type=int, nargs="*", default=[], metavar="PX",
                        help="also knn_pooled with the photos upscaled to each of these sizes (one extraction each)")
    args = parser.parse_args(argv)
    harness.quiet_progress()
    if not harness.CIFAR10_DEV.is_dir():
        raise SystemExit(f"{harness.CIFAR10_DEV} is missing: this benchmark needs the cifar10-dev images")
    params = harness.cifar10_dev_parameters()
    backbone = args.backbone or params["model"]["backbone"]
    cache = args.cache or default_cache(backbone, params)
    start, rows, features = time.perf_counter(), [], None
    sizes = {size: None for size in args.input_sizes}
    for seed, index in harness.cifar10_dev_splits(params, args.seeds):
        if features is None:  # the same images in the same order for every seed: extract once
            features = features_at(index, params, cache, backbone=backbone)
            if args.with_backbone:
                features["with_pooled"] = features_at(index, params, default_cache(args.with_backbone, params),
                                                      backbone=args.with_backbone)["pooled"]
            if args.patches:
                features |= features_at(index, params, cache.with_name(cache.stem + "_patches.safetensors"),
                                        patches=True, backbone=backbone)
            for size in sizes:
                sizes[size] = features_at(index, params, cache.with_name(f"{cache.stem}_{size}px.safetensors"),
                                          input_size=size, backbone=backbone)["pooled"]
        train = (index["split"] == "train").to_numpy()  # labelled: unseen kinds have their own split
        val = (index["split"] == "val").to_numpy()
        classes, predicted = index.loc[train, "kind"].to_numpy(), {}
        scores = arm_scores(features, train, classes, predicted)
        scores |= {f"knn_pooled {size} px": knn_scores(pooled[train], pooled) for size, pooled in sizes.items()}
        accuracy = {fit: float(np.mean(classified[val] == index.loc[val, "kind"].to_numpy()))
                    for fit, classified in predicted.items()}
        rows += [{"arm": arm, "fold": seed, **separation(values, index),
                  **({"val_accuracy": accuracy[arm.split()[-1]]} if arm.startswith("logistic") else {})}
                 for arm, values in scores.items()]
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    report(pd.DataFrame(rows), args.seeds, backbone, args.with_backbone)
    harness.write_results(args.results_file, "near_unseen_scores", rows, args)


def report(frame: pd.DataFrame, seeds: list[int], backbone: str, with_backbone: str | None) -> None:
    columns = ["near_auroc", "far_auroc", "val_accuracy"]
    summary = frame.reindex(columns=["arm", *columns]).groupby("arm", sort=False)[columns].agg(["mean", "std"])
    beside = f", {with_backbone}'s beside it in the two-backbone arms" if with_backbone else ""
    print(f"\ncifar10-dev, split seeds {seeds}, {backbone}'s frozen features{beside}; AUROC against the labelled "
          f"test images, mean +- sd over seeds (val accuracy: the logistic regression's, eight classes):\n")
    print("| score | near AUROC | far AUROC | val accuracy |\n|---|---|---|---|")
    for arm, row in summary.iterrows():
        print(f"| {arm} | " + " | ".join("" if np.isnan(row[(c, "mean")]) else
                                          f"{row[(c, 'mean')]:.3f} +- {row[(c, 'std')]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
