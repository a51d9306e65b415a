"""A trained model, or its head alone, over images or cached features: scores, embeddings, pooled features."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from image_classification.artefacts import Checkpoint, FeatureCache, ScoredIndex
from image_classification.backbones import BackboneSpec
from image_classification.model import ClassifierHead, ImageClassifier
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.fine_patches import tap_blocks
from image_classification.runtime.choice import torch_device
from image_classification.runtime.fast_path import checked_run, onnx_scoring_run
from image_classification.runtime.graphs import scoring_outputs
from image_classification.runtime.loader import image_loader, log_unreadable

logger = logging.getLogger(__name__)


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
                  patch_grid: int = 0, fine: bool = True) -> dict[str, np.ndarray | list[str]]:
    """Pooled features, embeddings and probabilities of ``valid`` straight from image files; with
    ``patch_grid``, also the (N, grid², C) ``patches`` and (with ``fine``) the ``fine_patches`` of the same pass."""
    # channels_last input alone gets the fast kernels; converting the weights too would change
    # their memory order under fit()'s fused Adam, which pairs moments with weights by that order
    model = model.to(device).eval()
    parts: dict[str, list] = {"features": [], "embedding": [], "score": [], "errors": []}
    taps = None
    if patch_grid:
        parts["patches"] = []
        if fine:
            parts["fine_patches"] = []
    loader = image_loader(paths, spec, batch_size, workers, sha256=sha256)
    for images, reasons in tqdm(loader, desc="Scoring", unit="batch", leave=False):
        if patch_grid and taps is None:
            taps = tap_blocks(model.backbone, images.shape[-1])
        outputs = scoring_outputs(model, images.to(device, memory_format=torch.channels_last), patch_grid, taps, fine)
        for name, value in zip(("score", "embedding", "features", "patches", "fine_patches"), outputs):
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
def scores_from_images(checkpoint: Checkpoint, image_index: pd.DataFrame,
                       runtime: RuntimeConfig | dict) -> ScoredIndex:
    """Score and embed every indexed image by running the whole model over the files: what a
    checkpoint with fine-tuned backbone blocks needs, since no cache describes its backbone.

    Runs on ``runtime.backend`` as train's extraction does: ONNX Runtime under ``auto`` on a CPU,
    checked against PyTorch on the first images (see :class:`~.fast_path.CheckedRun`)."""
    runtime = RuntimeConfig.from_params(runtime)
    logger.info("Scoring %d images through the whole model (its backbone was fine-tuned)", len(image_index))
    paths, device = image_index["path"].tolist(), torch_device(runtime)
    classifier = checkpoint.model().to(device).eval()

    def eager(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = scoring_outputs(classifier, images.to(device, memory_format=torch.channels_last))
        return tuple(output.float().cpu() for output in outputs)

    run = checked_run(runtime.backend, device, eager, lambda: onnx_scoring_run(checkpoint, classifier, runtime.threads),
                      runtime.parity_tolerance, "scores")
    parts: list[list[torch.Tensor]] = [[], [], []]
    errors: list[str] = []
    loader = image_loader(paths, checkpoint.spec, runtime.batch_size, runtime.workers,
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
