"""Nodes of the train pipeline: backbone features once per image, then the head trained on them."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from image_classification.artefacts import Checkpoint, FeatureCache, tensors_sha256
from image_classification.backbones import build_backbone
from image_classification.model import ClassifierHead, ImageClassifier
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.patches import bytes_per_image
from image_classification.runtime.choice import torch_device
from image_classification.runtime.extraction import extract_backbone_features
from image_classification.runtime.fast_path import CheckedRun, checked_run, onnx_blocks_run
from image_classification.runtime.loader import image_loader
from image_classification.sources import fine_classes
from image_classification.plots.training import training_curves_figure
from image_classification.training import ResumeStore, TrainConfig, cached_feeds, fit

logger = logging.getLogger(__name__)

CLASS_NAMES = ["invalid", "valid"]


def _seeded_backbone(model: ModelConfig, seed: int) -> torch.nn.Module:
    """The backbone, with random weights drawn from ``seed`` when ``weights`` is none, so the
    cache and the saved checkpoint describe the same network."""
    torch.manual_seed(seed)
    return build_backbone(model.backbone, model.weights, model.weights_path)


def extract_features(image_index: pd.DataFrame, model: ModelConfig, runtime: RuntimeConfig, seed: int,
                     train: TrainConfig | None = None) -> dict:
    """Run the frozen backbone over every indexed image once (unseen kinds too, for zero_shot),
    keeping patch vectors on a ``train.patch_grid`` square grid for evaluate's patch evidence
    (none without ``train``)."""
    runtime = RuntimeConfig.from_params(runtime)
    patch_grid = int(train.patch_grid) if train is not None else 0
    device = torch_device(runtime)
    backbone = _seeded_backbone(model, seed)
    features = extract_backbone_features(
        backbone, image_index["path"].tolist(), model.spec, device,
        batch_size=runtime.batch_size, workers=runtime.workers, head_input=model.head_input,
        sha256=image_index["sha256"].tolist(),  # a file changed since data_prep is skipped, not trained on
        patch_grid=patch_grid, backend=runtime.backend, threads=runtime.threads,
        parity_tolerance=runtime.parity_tolerance, dask=runtime.dask,
    )
    logger.info("Backbone features for %d images: %s, by %s", len(image_index), tuple(features["head_input"].shape),
                features["backend"])
    if "patches" in features:
        patches, fine = features["patches"], features["fine_patches"]
        size = bytes_per_image(patch_grid, patches.shape[-1]) + (fine[0].numel() * fine.element_size() if len(fine) else 0)
        logger.info("Patch vectors for patch evidence: %s, and fine ones %s: %s bytes per image (train.patch_grid %d; "
                    "0 turns them off)", tuple(patches.shape), tuple(fine.shape), f"{size:,}", patch_grid)
    cache = FeatureCache.of(
        head_input=features["head_input"], pooled=features["pooled"], backbone=model.backbone, weights=model.weights,
        head_input_mode=model.head_input, paths=image_index["path"].tolist(), sha256=image_index["sha256"].tolist(),
        errors=features["errors"], backbone_sha256=tensors_sha256(backbone.cpu().state_dict()),
        patches=features.get("patches"), fine_patches=features.get("fine_patches"), input_size=model.spec.input_size,
    )
    return cache.to_payload()


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def train_classifier(
    backbone_features: dict,
    image_index: pd.DataFrame,
    model: ModelConfig,
    train: TrainConfig,
    runtime: RuntimeConfig,
    seed: int,
    training_state: ResumeStore,
) -> tuple[dict, pd.DataFrame]:
    """Train the head (and the last ``trainable_blocks`` of the backbone) with early stopping.

    Returns:
        The checkpoint of the best epoch (every weight plus what is needed to rebuild and use
        the model) and the per-epoch history.
    """
    runtime = RuntimeConfig.from_params(runtime)
    device = torch_device(runtime)
    backbone = _seeded_backbone(model, seed)
    cache = FeatureCache.from_payload(backbone_features).check(image_index, model.backbone, model.head_input,
                                                               tensors_sha256(backbone.state_dict()),
                                                               model.spec.input_size)
    rows = {split: np.flatnonzero(cache.readable & (image_index["split"] == split).to_numpy())
            for split in ("train", "val")}
    targets = {split: image_index["target"].to_numpy()[rows[split]].astype(int) for split in rows}
    fine, codes = fine_classes(image_index, rows["train"]) if train.fine_class_weight > 0 else ([], None)
    head = ClassifierHead(in_channels=model.spec.feature_channels, fine_classes=len(fine))
    train_targets = targets["train"]
    if fine:
        # the second column is each training image's fine class, for the head's auxiliary output
        targets = {**targets, "train": np.stack([train_targets, codes], axis=1)}
        logger.info("Training with an auxiliary output over %d fine classes: %s", len(fine), ", ".join(fine))
    classifier = ImageClassifier(backbone, head, head_input=model.head_input)
    classifier.freeze_backbone(train.trainable_blocks)
    # the fine-tuning path trains the trainable part on the frozen part's output (its saved states say so)
    fingerprint = _fingerprint(image_index[["path", "sha256", "split"]].values.tolist(), model, train, seed,
                               "trainable part" if train.trainable_blocks else "head")
    if train.trainable_blocks == 0:
        if train.augment != "none":
            logger.warning("train.augment=%s has no effect with a frozen backbone (train.trainable_blocks=0): the head "
                           "trains on features cached once per image; set trainable_blocks to fine-tune with it",
                           train.augment)
        trained, batches, val_scores = head, *cached_feeds(cache.head_input, rows, targets, train, seed, device)
    else:
        trained, batches, val_scores = image_feeds(classifier, image_index, rows, targets, model, train, runtime, seed,
                                                   device)
    best, history, best_epoch = fit(trained, batches, val_scores, targets["val"], train_targets, train,
                                    device, seed, fingerprint, training_state)
    trained.load_state_dict(best)
    checkpoint = Checkpoint.from_model(
        classifier.cpu(), backbone=model.backbone, weights=model.weights, input_size=model.spec.input_size,
        mean=list(model.spec.mean), std=list(model.spec.std),
        head={"in_channels": model.spec.feature_channels, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}
        | ({"fine_classes": len(fine)} if fine else {}),
        class_names=CLASS_NAMES, fine_class_names=fine or None, train=train.as_dict(), seed=seed, best_epoch=best_epoch,
        fine_tuned_blocks=train.trainable_blocks, epochs_run=int(len(history)),
        best_val_recall_at_precision=float(history["val_recall_at_precision"].max()) if len(history) else 0.0,
    )
    return checkpoint.to_payload(), history


def frozen_part_run(classifier: ImageClassifier, spec, runtime: RuntimeConfig, device: torch.device) -> CheckedRun:
    """The classifier's frozen blocks as one checked run over image batches: in ONNX Runtime under
    ``runtime.backend`` auto on a CPU (checked against PyTorch on the first batch), else PyTorch."""
    frozen = classifier.frozen_part().to(device).eval()

    def eager(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return (frozen(images.to(device, memory_format=torch.channels_last)),)

    # with every block trainable there is nothing frozen to export
    build = (lambda: onnx_blocks_run(frozen, spec.input_size, runtime.threads)) if len(frozen) else None
    return checked_run(runtime.backend, device, eager, build, runtime.parity_tolerance, "the frozen blocks' output")


def image_feeds(classifier: ImageClassifier, index: pd.DataFrame, rows: dict, targets: dict, model: ModelConfig,
                train: TrainConfig, runtime: RuntimeConfig, seed: int, device: torch.device):
    """What train_classifier fine-tunes backbone blocks with: the classifier's trainable part (see
    :meth:`~image_classification.model.ImageClassifier.trainable_part`), training batches of its input
    (the frozen blocks' output on the image files, through :func:`frozen_part_run`) and validation scores."""
    paths = {split: index["path"].to_numpy()[rows[split]].tolist() for split in rows}
    sha256 = {split: index["sha256"].to_numpy()[rows[split]].tolist() for split in rows}
    batch_size = runtime.batch_size
    frozen = frozen_part_run(classifier, model.spec, runtime, device)

    def batches(epoch: int):
        order = torch.randperm(len(paths["train"]), generator=torch.Generator().manual_seed(seed * 7919 + epoch)).numpy()
        loader = image_loader([paths["train"][i] for i in order], model.spec, train.batch_size, train.workers,
                              augment=train.augment, sha256=[sha256["train"][i] for i in order])
        return _with_targets(loader, targets["train"][order], frozen)

    @torch.inference_mode()
    def val_scores(part: torch.nn.Module) -> np.ndarray:
        scores = []
        for images, reasons in image_loader(paths["val"], model.spec, batch_size, train.workers, sha256=sha256["val"]):
            logits = part(frozen(images, reasons)[0].to(device))
            scores.append(torch.softmax(logits, dim=1)[:, 1].cpu())
        return torch.cat(scores).numpy() if scores else np.empty(0, np.float32)

    return classifier.trainable_part(), batches, val_scores


def _with_targets(loader, targets: np.ndarray, frozen: CheckedRun):
    """Pair each image batch of an unshuffled loader, run through the frozen blocks, with its targets,
    leaving out images that could not be read since the cache was built (their zero tensors are not
    pictures of their class)."""
    start = 0
    for images, reasons in loader:
        readable = torch.tensor([not reason for reason in reasons], dtype=torch.bool)
        batch_targets = torch.as_tensor(targets[start : start + len(images)])
        start += len(images)
        if readable.any():
            yield frozen(images, reasons)[0][readable], batch_targets[readable]


def plot_training_curves(history: pd.DataFrame, model_checkpoint: dict) -> Figure:
    """Loss and validation metrics per epoch, with the epoch whose weights training restored marked
    (the checkpoint's ``best_epoch``: read, never recomputed, since tied epochs keep the first)."""
    best_epoch = Checkpoint.from_payload(model_checkpoint).best_epoch if len(history) else None
    return training_curves_figure(history, best_epoch)
