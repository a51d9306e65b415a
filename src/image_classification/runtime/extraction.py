"""A frozen backbone over every image once: what train's feature cache keeps of each.

The pass runs on ``runtime.backend`` (:mod:`.fast_path`): ONNX Runtime under ``auto`` on a CPU,
checked against eager PyTorch on the first images; in this process or in partitions on the Dask
cluster ``runtime.dask`` names (:mod:`image_classification.distributed`).
"""

from __future__ import annotations

import uuid

import torch
from tqdm.auto import tqdm

from image_classification.backbones import BackboneSpec
from image_classification.distributed import (
    DaskMap,
    DaskSettings,
    dask_map,
    worker_cached,
)
from image_classification.fine_patches import tap_blocks
from image_classification.runtime.fast_path import CheckedRun, checked_run, onnx_feature_run
from image_classification.runtime.graphs import FEATURE_OUTPUTS, torch_features
from image_classification.runtime.loader import image_loader, log_unreadable
from image_classification.runtime.parity import PARITY_TOLERANCE


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
    parity_tolerance: float = PARITY_TOLERANCE,
    parity_images: int = 16,
    dask: DaskSettings | dict | None = None,
) -> dict[str, torch.Tensor | list[str] | str | float]:
    """Run a frozen backbone over every image once.

    With ``patch_grid`` > 0 the same pass also keeps ``patches``: float16 (N, patch_grid**2, C)
    vectors of the last stride-8 and stride-16 maps, and ``fine_patches``: float16 (N, side², C) of the
    stride-4 and -8 maps on the stride-8 grid (see :mod:`image_classification.fine_patches`).

    ``backend`` (see :func:`~.fast_path.checked_run`): ``onnxruntime`` runs the backbone exported to
    ONNX (faster than eager PyTorch on a CPU: docs/decisions/0007). Its outputs on the first ``parity_images`` readable
    images are compared with eager PyTorch's (:func:`~.parity.parity_difference`); over
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
    # channels_last lets oneDNN pick faster convolution kernels (docs/decisions/0007)
    head_input, patch_grid = options["head_input"], int(options["patch_grid"])
    taps = tap_blocks(backbone.cpu(), spec.input_size) if patch_grid else ((), ())
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
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    errors: list[str] = []
    for images, reasons in tqdm(
        image_loader(paths, spec, batch_size, workers, sha256=sha256), desc="Backbone features", unit="batch",
        leave=False, disable=None if progress else True,
    ):
        for part, output in zip(parts, run(images, reasons)):
            part.append(output.to(torch.float16).cpu())
        errors += list(reasons)
    empty = torch.empty(0, dtype=torch.float16)
    features = {"head_input": torch.cat(parts[0]) if parts[0] else empty,
                "pooled": torch.cat(parts[1]) if parts[1] else empty, "errors": errors}
    if patches:
        features["patches"] = torch.cat(parts[2]) if parts[2] else empty
        features["fine_patches"] = torch.cat(parts[3]) if parts[3] else empty
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
    features = {name: torch.cat([part[name] for part in ordered]) for name in FEATURE_OUTPUTS
                if name in ordered[0]}
    features["errors"] = [error for part in ordered for error in part["errors"]]
    log_unreadable(paths, features["errors"], "feature extraction")
    return features | {"backend": "+".join(sorted({part["backend"] for part in ordered})),
                       "parity": max(part["parity"] for part in ordered)}
