"""Running a backbone or a trained model over many images, in batches, on the chosen device."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from image_classification.artefacts import Checkpoint, FeatureCache, ScoredIndex
from image_classification.backbones import BackboneSpec
from image_classification.distributed import (
    DaskMap,
    DaskSettings,
    dask_map,
    worker_cached,
)
from image_classification.errors import ParameterError
from image_classification.export import (
    scoring_outputs,
)
from image_classification.fast_path import (
    CheckedRun,
    checked_run,
    onnx_feature_run,
    onnx_scoring_run,
)
from image_classification.images import (
    CHANGED_SINCE_INDEXED,
    ImageLimits,
    ImageReadError,
    load_rgb,
)
from image_classification.model import (
    ClassifierHead,
    ImageClassifier,
    adapt_feature_map,
    pooled_features,
    preprocess_transform,
)
from image_classification.patches import patch_blocks, patch_grid_features

logger = logging.getLogger(__name__)


def torch_device(runtime: dict) -> torch.device:
    """The device named by ``runtime.device`` (auto/cpu/cuda), with ``runtime.threads`` applied."""
    threads = runtime.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    name = str(runtime.get("device", "auto"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"runtime.device is '{name}' but PyTorch sees no CUDA GPU; use auto or cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ParameterError(f"runtime.device must be auto, cpu or cuda[:N], got '{name}'")
    return torch.device(name)


class ImageFiles(Dataset):
    """Images by path, decoded (JPEGs in draft mode) and preprocessed for a backbone.

    An image that cannot be read yields a zero tensor and its reason instead of an exception,
    so one bad file never stops a run over thousands. With ``sha256`` (the image index's), a file
    whose bytes changed since data_prep is such an image too.
    """

    def __init__(self, paths: list[str], spec: BackboneSpec, augment: str = "none",
                 limits: ImageLimits | None = None, sha256: list[str] | None = None) -> None:
        self.paths = list(paths)
        self.spec = spec
        self.transform = preprocess_transform(spec, augment)
        self.limits = limits or ImageLimits(min_side=1)
        self.sha256 = list(sha256) if sha256 is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            image = load_rgb(self.paths[index], self.limits, draft_size=self.spec.input_size,
                             sha256=self.sha256[index], keep_gray=True)
            return self.transform(image), ""
        except ImageReadError as error:
            size = self.spec.input_size
            return torch.zeros(3, size, size), str(error) or "unreadable"


def image_loader(paths: list[str], spec: BackboneSpec, batch_size: int, workers: int, augment: str = "none",
                 limits: ImageLimits | None = None, sha256: list[str] | None = None) -> DataLoader:
    """Batches of preprocessed images in the given order; ``workers`` processes decode while the
    model computes."""
    return DataLoader(ImageFiles(paths, spec, augment, limits=limits, sha256=sha256), batch_size=batch_size,
                      shuffle=False, num_workers=workers)


def log_unreadable(paths: list[str], errors: list[str], what: str) -> None:
    """Name the files a pass skipped, and say to rerun data_prep when some changed since it indexed them."""
    skipped = [(path, error) for path, error in zip(paths, errors) if error]
    if not skipped:
        return
    logger.warning("%d of %d images could not be read for %s", len(skipped), len(errors), what)
    for path, error in skipped[:20]:
        logger.warning("Skipping %s: %s", path, error)
    changed = sum(1 for _, error in skipped if error == CHANGED_SINCE_INDEXED)
    if changed:
        logger.warning("%d images changed since data_prep indexed them and were skipped; rerun data_prep "
                       "(`kedro run --pipelines data_prep`) and then this stage to use them", changed)


def torch_features(backbone: torch.nn.Sequential, taps: tuple[int, ...], images: torch.Tensor, head_input: str,
                    patch_grid: int) -> tuple[torch.Tensor, ...]:
    """Eager PyTorch: float32 head input, pooled features and (with ``taps``) patches of a batch."""
    feature_map, tapped = images, []
    for index, block in enumerate(backbone):
        feature_map = block(feature_map)
        if index in taps:
            tapped.append(feature_map)
    outputs = (adapt_feature_map(feature_map, head_input), pooled_features(feature_map))
    if taps:
        outputs += (patch_grid_features(tapped, patch_grid, dtype=torch.float32),)
    return outputs


@torch.inference_mode()
def extract_backbone_features(
    backbone: torch.nn.Module,
    paths: list[str],
    spec: BackboneSpec,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    head_input: str = "pooled",
    sha256: list[str] | None = None,
    patch_grid: int = 0,
    backend: str = "auto",
    threads: int | None = None,
    parity_tolerance: float = 1e-4,
    parity_images: int = 16,
    dask: DaskSettings | dict | None = None,
) -> dict[str, torch.Tensor | list[str] | str | float]:
    """Run a frozen backbone over every image once.

    With ``patch_grid`` > 0 the same pass also keeps ``patches``: float16 (N, patch_grid**2, C)
    vectors of the last stride-8 and stride-16 maps (see :mod:`image_classification.patches`).

    ``backend`` (see :func:`~image_classification.fast_path.checked_run`): ``onnxruntime`` runs the backbone
    exported to ONNX (about 3x eager PyTorch on a CPU). Its outputs on the first ``parity_images``
    readable images are compared with eager PyTorch's (:func:`feature_parity`); over
    ``parity_tolerance``, or when the export fails, ``auto`` falls back to PyTorch with a warning
    and an explicit ``onnxruntime`` stops with an error.

    With ``dask`` naming a cluster (see :mod:`image_classification.distributed`), the images are
    cut into partitions extracted on its workers, each checking its own backend once.

    Returns:
        ``head_input``: what the head reads of each feature map, float16 (see
        :func:`~image_classification.model.adapt_feature_map`);
        ``pooled``: float16 (N, C) global-average-pooled features;
        ``errors``: per image, the reason it could not be read, or "" (with ``sha256``, a file
        that changed since data_prep indexed it is unreadable);
        ``backend``: the backend that ran; ``parity``: its measured difference from PyTorch (0 for PyTorch).
    """
    options = {"head_input": head_input, "patch_grid": patch_grid, "backend": backend, "threads": threads,
               "parity_tolerance": parity_tolerance, "parity_images": parity_images, "batch_size": batch_size}
    dask = DaskSettings.from_params(dask)
    if dask.enabled and paths:
        with dask_map(dask, "Backbone features") as cluster:
            return _features_on_dask(cluster, backbone, paths, spec, device, sha256, options, dask)
    run = _feature_run(backbone, spec, device, options)
    features = _features(run, paths, spec, batch_size, workers, sha256, bool(patch_grid))
    log_unreadable(paths, features["errors"], "feature extraction")
    return features | {"backend": run.name, "parity": run.parity or 0.0}


def _feature_run(backbone: torch.nn.Module, spec: BackboneSpec, device: torch.device, options: dict) -> CheckedRun:
    """The backend that turns a batch into (head input, pooled[, patches]), checked against eager PyTorch."""
    # channels_last lets oneDNN pick faster convolution kernels: 1.7x on a 2-core CPU
    head_input, patch_grid = options["head_input"], int(options["patch_grid"])
    taps = patch_blocks(backbone.cpu(), spec.input_size) if patch_grid else ()
    backbone = backbone.eval()

    def eager(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch_features(backbone, taps, images.to(device, memory_format=torch.channels_last), head_input,
                              patch_grid)

    run = checked_run(options["backend"], device, eager,
                      lambda: onnx_feature_run(backbone.cpu(), spec, head_input, patch_grid, options["threads"]),
                      float(options["parity_tolerance"]), "backbone features", int(options["parity_images"]))
    backbone = backbone.to(device, memory_format=torch.channels_last)
    return run


def _features(run: CheckedRun, paths: list[str], spec: BackboneSpec, batch_size: int, workers: int,
              sha256: list[str] | None, patches: bool, progress: bool = True) -> dict:
    """float16 head input, pooled features (and patches) and read errors of ``paths``, batch by batch."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    errors: list[str] = []
    for images, reasons in tqdm(
        image_loader(paths, spec, batch_size, workers, sha256=sha256), desc="Backbone features", unit="batch",
        leave=False, disable=not progress,
    ):
        for part, output in zip(parts, run(images, reasons)):
            part.append(output.to(torch.float16).cpu())
        errors += list(reasons)
    empty = torch.empty(0, dtype=torch.float16)
    features = {"head_input": torch.cat(parts[0]) if parts[0] else empty,
                "pooled": torch.cat(parts[1]) if parts[1] else empty, "errors": errors}
    if patches:
        features["patches"] = torch.cat(parts[2]) if parts[2] else empty
    return features


def features_partition(items: list[tuple[str, str | None]], key: str, backbone: torch.nn.Module, spec: BackboneSpec,
                       device: str, options: dict) -> dict:
    """On a Dask worker: the features of some ``(path, sha256)`` items, with the backend this worker
    built and checked once per run."""
    def build() -> CheckedRun:
        torch.set_num_threads(int(options["threads"]))
        return _feature_run(backbone, spec, torch.device(device), options)

    run = worker_cached(key, build)
    paths, sha256 = [path for path, _ in items], [digest for _, digest in items]
    features = _features(run, paths, spec, int(options["batch_size"]), 0, sha256, bool(options["patch_grid"]),
                         progress=False)
    return features | {"backend": run.name, "parity": run.parity or 0.0}


def _features_on_dask(cluster: DaskMap, backbone: torch.nn.Module, paths: list[str], spec: BackboneSpec,
                      device: torch.device, sha256: list[str] | None, options: dict, dask: DaskSettings) -> dict:
    """:func:`extract_backbone_features` partition by partition on the cluster, put back in the paths' order."""
    # a Dask worker is a daemon process (no DataLoader workers) whose cores are its threads
    options = options | {"threads": int(dask.threads_per_worker)}
    shared = cluster.shared(backbone.cpu().eval())
    items = list(zip(paths, sha256 if sha256 is not None else [None] * len(paths)))
    ordered = cluster.in_order(features_partition, items, f"features-{uuid.uuid4().hex}", shared, spec, str(device),
                               options)
    features = {name: torch.cat([part[name] for part in ordered]) for name in ("head_input", "pooled", "patches")
                if name in ordered[0]}
    features["errors"] = [error for part in ordered for error in part["errors"]]
    log_unreadable(paths, features["errors"], "feature extraction")
    return features | {"backend": "+".join(sorted({part["backend"] for part in ordered})),
                       "parity": max(part["parity"] for part in ordered)}


@torch.inference_mode()
def head_outputs(head: ClassifierHead, head_input: torch.Tensor, device: torch.device,
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and probabilities of ``valid`` from cached backbone features."""
    head = head.to(device).eval()
    embeddings, scores = [], []
    for start in range(0, len(head_input), batch_size):
        batch = head_input[start : start + batch_size].to(device, torch.float32)
        embedding, logits = head.embed_and_classify(batch)
        embeddings.append(embedding.cpu())
        scores.append(torch.softmax(logits, dim=1)[:, 1].cpu())
    if not embeddings:
        return np.empty((0, head.layers[-1].in_features), np.float32), np.empty(0, np.float32)
    return torch.cat(embeddings).numpy(), torch.cat(scores).numpy()


@torch.inference_mode()
def model_outputs(model: ImageClassifier, paths: list[str], spec: BackboneSpec, device: torch.device,
                  batch_size: int = 64, workers: int = 0, sha256: list[str] | None = None,
                  patch_grid: int = 0) -> dict[str, np.ndarray | list[str]]:
    """Pooled features, embeddings and probabilities of ``valid`` straight from image files; with
    ``patch_grid``, also the (N, grid², C) ``patches`` of the same pass."""
    from image_classification.export import scoring_outputs

    # channels_last input alone gets the fast kernels; converting the weights too would change
    # their memory order under fit()'s fused Adam, which pairs moments with weights by that order
    model = model.to(device).eval()
    parts: dict[str, list] = {"features": [], "embedding": [], "score": [], "errors": []}
    taps = None
    if patch_grid:
        parts["patches"] = []
    loader = image_loader(paths, spec, batch_size, workers, sha256=sha256)
    for images, reasons in tqdm(loader, desc="Scoring", unit="batch", leave=False):
        if patch_grid and taps is None:
            taps = patch_blocks(model.backbone, images.shape[-1])
        outputs = scoring_outputs(model, images.to(device, memory_format=torch.channels_last), patch_grid, taps)
        for name, value in zip(("score", "embedding", "features", "patches"), outputs):
            parts[name].append(value.cpu())
        parts["errors"] += list(reasons)
    return {
        key: (torch.cat(value).numpy() if key != "errors" else value) for key, value in parts.items()
    }


def scores_from_cache(checkpoint: Checkpoint, cache: FeatureCache, device: torch.device) -> ScoredIndex:
    """Score and embed every cached image with a checkpoint whose backbone is the cache's frozen one:
    only the head runs, so this takes seconds however large the images were."""
    embedding, score = head_outputs(checkpoint.model().head, cache.head_input, device)
    return ScoredIndex(score=np.where(cache.readable, score, np.nan).astype(np.float32), embedding=embedding,
                       pooled=cache.pooled, sha256=list(cache.sha256), errors=list(cache.errors),
                       checkpoint=checkpoint.fingerprint(), source="feature_cache")


@torch.inference_mode()
def scores_from_images(checkpoint: Checkpoint, image_index: pd.DataFrame, runtime: dict) -> ScoredIndex:
    """Score and embed every indexed image by running the whole model over the files: what a
    checkpoint with fine-tuned backbone blocks needs, since no cache describes its backbone.

    Runs on ``runtime.backend`` as train's extraction does: ONNX Runtime under ``auto`` on a CPU,
    checked against PyTorch on the first images (see :class:`CheckedRun`)."""
    logger.info("Scoring %d images through the whole model (its backbone was fine-tuned)", len(image_index))
    paths, device = image_index["path"].tolist(), torch_device(runtime)
    classifier = checkpoint.model().to(device).eval()

    def eager(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = scoring_outputs(classifier, images.to(device, memory_format=torch.channels_last))
        return tuple(output.float().cpu() for output in outputs)

    run = checked_run(str(runtime.get("backend", "auto")), device, eager,
                      lambda: onnx_scoring_run(checkpoint, classifier, runtime.get("threads")),
                      float(runtime.get("parity_tolerance", 1e-4)), "scores")
    parts: list[list[torch.Tensor]] = [[], [], []]
    errors: list[str] = []
    loader = image_loader(paths, checkpoint.spec, int(runtime["batch_size"]), int(runtime["workers"]),
                          sha256=image_index["sha256"].tolist())
    for images, reasons in tqdm(loader, desc="Scoring", unit="batch", leave=False):
        for part, output in zip(parts, run(images, reasons)):
            part.append(output)
        errors += list(reasons)
    log_unreadable(paths, errors, "scoring")
    logger.info("Scored the images with %s", run.name)
    score, embedding, pooled = (torch.cat(part) if part else torch.empty(0) for part in parts)
    readable = np.array([not error for error in errors], dtype=bool)
    return ScoredIndex(score=np.where(readable, score.numpy(), np.nan).astype(np.float32),
                       embedding=embedding.numpy().astype(np.float32), pooled=pooled.to(torch.float16),
                       sha256=image_index["sha256"].tolist(), errors=errors, checkpoint=checkpoint.fingerprint(),
                       source="images")
