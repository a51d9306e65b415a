"""The training loop: Adam, class weights, early stopping on the target metric, and resume; and what
feeds a head trained on cached backbone features (:func:`cached_feeds`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from image_classification.errors import DataError
from image_classification.metrics import validation_score
from image_classification.model import ClassifierHead
from image_classification.parameters.train import TrainConfig, schedule_factor
from image_classification.runtime.scoring import head_outputs

logger = logging.getLogger(__name__)


class ResumeStore:
    """Where the loop keeps its last finished epoch; anything with read/write/clear will do."""

    def read(self) -> dict | None:  # pragma: no cover - interface
        raise NotImplementedError

    def write(self, state: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def clear(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class NoResume(ResumeStore):
    """Keeps nothing: training always starts from the first epoch."""

    def read(self) -> None:
        return None

    def write(self, state: dict) -> None:
        pass

    def clear(self) -> None:
        pass


def class_weight_tensor(targets: np.ndarray, mode: str) -> torch.Tensor | None:
    """Inverse-frequency weights (n / (2 n_c)) so a rare class counts as much as a common one."""
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise DataError(f"the training split needs both classes, got counts {counts.tolist()} (invalid, valid)")
    return torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    groups = [{"params": head, "lr": config.learning_rate}]
    if backbone:
        groups.append({"params": backbone, "lr": config.backbone_learning_rate})
    # the fused kernel updates all parameters in one pass instead of one per tensor
    return torch.optim.Adam(groups, weight_decay=config.weight_decay, fused=True)


def _pack_state(model: nn.Module, optimizer: torch.optim.Optimizer, best: dict[str, torch.Tensor],
                progress: dict) -> dict:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best.items()}
    optimizer_state = optimizer.state_dict()
    for param_id, slots in optimizer_state["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{param_id}.{slot}"] = torch.as_tensor(value).detach().cpu()
    return {"tensors": tensors, "metadata": progress | {"param_groups": optimizer_state["param_groups"]}}


def _unpack_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    tensors = state["tensors"]
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, slot = key.split(".", 2)
            slots.setdefault(int(param_id), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["metadata"]["param_groups"]})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return best, state["metadata"]


def _loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: nn.Module,
          fine_class_weight: float) -> torch.Tensor:
    """The valid/invalid loss; with (N, 2) targets (valid/invalid, fine class) plus
    ``fine_class_weight`` times the fine-class cross-entropy of the head's auxiliary output."""
    if targets.ndim == 1:
        return loss_fn(model(inputs), targets)
    logits, fine_logits = model.forward_train(inputs)
    return loss_fn(logits, targets[:, 0]) + fine_class_weight * nn.functional.cross_entropy(fine_logits, targets[:, 1])


def fit(
    model: nn.Module,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    validation_scores: Callable[[nn.Module], np.ndarray],
    validation_targets: np.ndarray,
    train_targets: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    seed: int,
    fingerprint: str,
    store: ResumeStore = NoResume(),
    name: str = "Training",
) -> tuple[dict[str, torch.Tensor], pd.DataFrame, int]:
    """Train ``model`` and return the best epoch's weights, the history and the best epoch.

    Args:
        model: any module mapping a batch of inputs to (N, 2) logits; only parameters with
            ``requires_grad`` are trained.
        train_batches: ``epoch -> iterable of (inputs, targets)``; it must shuffle from a seed
            derived from the epoch, so a resumed run sees the same batches. Targets are (N,)
            valid/invalid, or (N, 2) with each image's fine class as the second column for a
            model with an auxiliary fine-class output (``forward_train``).
        train_targets: the training images' valid/invalid targets (for class weights).
        validation_scores: ``model -> probability of valid`` for each validation image.
        fingerprint: identifies the data and settings; a saved state with another fingerprint
            is ignored instead of resumed.
        store: keeps the last finished epoch so an interrupted run resumes there. A state that cannot
            be written (a full disk) costs a warning, not the run: training goes on without one.
        name: what is trained, as the progress bar and each epoch's log line call it (cross-validation's
            heads keep no resume state, and must not read as the training that does).
    """
    model = model.to(device)
    optimizer = _optimizer(model, config)
    # the schedule is a pure function of the step, so a resumed run continues on the same curve
    base_rates = [group["lr"] for group in optimizer.param_groups]
    steps_per_epoch = max(1, math.ceil(len(train_targets) / config.batch_size))
    weights = class_weight_tensor(train_targets, config.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    progress = {"fingerprint": fingerprint, "epoch": 0, "history": [], "best_epoch": 0,
                "best_score": [-1.0, -1.0], "bad_epochs": 0}
    saved = store.read()
    if saved is not None and saved["metadata"].get("fingerprint") == fingerprint:
        best, progress = _unpack_state(saved, model, optimizer)
        logger.info("Resuming %s after epoch %d of %d", name.lower(), progress["epoch"], config.epochs)
    elif saved is not None:
        logger.info("Ignoring a saved training state from other data or settings")

    last_saved = time.monotonic()
    epochs = tqdm(range(progress["epoch"] + 1, config.epochs + 1), desc=name, unit="epoch",
                  initial=progress["epoch"], total=config.epochs, leave=False)
    for epoch in epochs:
        if config.patience is not None and progress["bad_epochs"] >= config.patience:
            logger.info("Early stopping: no better validation score for %d epochs", config.patience)
            break
        torch.manual_seed(seed * 1009 + epoch)  # dropout draws depend on the epoch only: resumable
        model.train()
        total, count = 0.0, 0
        for step, (inputs, targets) in enumerate(train_batches(epoch)):
            done = ((epoch - 1) * steps_per_epoch + step) / (config.epochs * steps_per_epoch)
            for group, rate in zip(optimizer.param_groups, base_rates):
                group["lr"] = rate * schedule_factor(config.schedule, done)
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(model, inputs, targets, loss_fn, config.fine_class_weight)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(targets)
            count += len(targets)
        model.eval()
        scores = validation_scores(model)
        with torch.no_grad():
            val_loss = float(loss_fn(
                torch.log(torch.as_tensor(np.stack([1 - scores, scores], axis=1), dtype=torch.float32).clamp_min(1e-12)).to(device),
                torch.as_tensor(validation_targets, dtype=torch.long, device=device),
            )) if len(scores) else float("nan")
        recall, average_precision = validation_score(validation_targets, scores, config.target_precision)
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss,
               "val_recall_at_precision": recall, "val_average_precision": average_precision}
        progress["history"].append(row)
        if (recall, average_precision) > tuple(progress["best_score"]):
            progress |= {"best_score": [recall, average_precision], "best_epoch": epoch, "bad_epochs": 0}
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            progress["bad_epochs"] += 1
        progress["epoch"] = epoch
        epochs.set_postfix(loss=f"{row['train_loss']:.4f}", val_recall=f"{recall:.3f}", val_ap=f"{average_precision:.3f}")
        logger.info(
            "%s, epoch %d/%d: train loss %.4f, val loss %.4f, val recall@P>=%.2f %.3f, val AP %.3f",
            name, epoch, config.epochs, row["train_loss"], val_loss, config.target_precision, recall, average_precision,
        )
        # the state of a 6.9M-parameter head with Adam is ~110 MB: written at most once a minute
        # (and after the first epoch), an interrupted run loses at most that much work
        if epoch == 1 or time.monotonic() - last_saved >= config.save_state_every_s:
            store = _saved(store, _pack_state(model, optimizer, best, progress))
            last_saved = time.monotonic()
    store.clear()
    logger.info("%s, best epoch %d: val recall %.3f, val AP %.3f", name, progress["best_epoch"], *progress["best_score"])
    return best, pd.DataFrame(progress["history"]), int(progress["best_epoch"])


def _saved(store: ResumeStore, state: dict) -> ResumeStore:
    """Write the resume state; when it cannot be written (a full disk: it is several times the model's
    size), warn once and go on without one (:class:`NoResume`), so that the model itself can still be saved."""
    try:
        store.write(state)
    except Exception as error:  # noqa: BLE001 - the dataset wraps OSError (ENOSPC, EFBIG) in its own error
        cause = next((e for e in (error, error.__cause__, error.__context__) if isinstance(e, OSError)), None)
        if cause is None:
            raise
        logger.warning("The training state cannot be saved (%s); training goes on without a resume point, so an "
                       "interrupted run would start again from epoch 1. Free disk space to keep one.",
                       cause.strerror or str(cause))
        try:
            store.clear()  # no older state left behind to be resumed from by mistake
        except Exception:  # noqa: BLE001 - nothing to clear, or the disk refuses that too
            pass
        return NoResume()
    return store


def cached_feeds(head_input: torch.Tensor, rows: dict, targets: dict, train: TrainConfig, seed: int,
                 device: torch.device):
    """Training batches (per epoch, reshuffled with ``seed``) and validation scores for a head trained
    on cached head inputs (a feature cache's ``head_input``): what train_classifier uses with a frozen
    backbone, and what cross-validation trains each fold's head with."""
    train_set = TensorDataset(head_input[rows["train"]].float(), torch.as_tensor(targets["train"]))
    val_inputs = head_input[rows["val"]]

    def batches(epoch: int):
        generator = torch.Generator().manual_seed(seed * 7919 + epoch)
        return DataLoader(train_set, batch_size=train.batch_size, shuffle=True, generator=generator)

    def val_scores(head: ClassifierHead) -> np.ndarray:
        return head_outputs(head, val_inputs, device)[1]

    return batches, val_scores
