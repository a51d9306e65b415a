"""Training figures: loss and validation metrics per epoch."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from image_classification.plots.style import grid


def training_curves_figure(history: pd.DataFrame, best_epoch: int | None) -> Figure:
    """Train and validation loss, and validation recall at the target precision and average
    precision, per epoch (columns ``epoch``, ``train_loss``, ``val_loss``,
    ``val_recall_at_precision``, ``val_average_precision``); ``best_epoch``, the epoch whose weights
    training restored (the checkpoint's, never recomputed here), marked unless None."""
    figure = Figure(figsize=(11, 4))
    loss_axis, metric_axis = figure.subplots(1, 2)
    loss_axis.plot(history["epoch"], history["train_loss"], label="train loss")
    loss_axis.plot(history["epoch"], history["val_loss"], label="validation loss")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    metric_axis.plot(history["epoch"], history["val_recall_at_precision"], label="val recall at target precision")
    metric_axis.plot(history["epoch"], history["val_average_precision"], label="val average precision")
    if best_epoch is not None:
        metric_axis.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch} (restored)")
    metric_axis.set(xlabel="epoch", ylim=(0, 1.02), title="Validation")
    for axis in (loss_axis, metric_axis):
        axis.legend(loc="best", fontsize="small")
        grid(axis)
    figure.tight_layout()
    return figure
