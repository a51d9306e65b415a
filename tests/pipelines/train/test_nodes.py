"""The train pipeline's figure node, on a plain history and checkpoint."""

from __future__ import annotations

import pandas as pd

from image_classification.artefacts import Checkpoint
from image_classification.pipelines.train.nodes import plot_training_curves


def legend(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[1].get_legend().get_texts()]


def test_the_training_curves_mark_the_epoch_training_restored_not_a_recomputed_one():
    # every epoch ties on the validation score: training keeps the first (it only moves on a strictly
    # better score), so the figure must say epoch 1, as the checkpoint does, not the last tied one
    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5, 6], "train_loss": [0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
                            "val_loss": [0.6] * 6, "val_recall_at_precision": [1.0] * 6,
                            "val_average_precision": [1.0] * 6})
    checkpoint = Checkpoint(tensors={}, backbone="efficientnet_lite0", head={}, best_epoch=1).to_payload()
    labels = legend(plot_training_curves(history, checkpoint))
    assert "best epoch 1 (restored)" in labels
    assert not any("epoch 6" in label for label in labels)


def test_a_checkpoint_without_a_recorded_best_epoch_marks_none():
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.6], "val_loss": [0.6, 0.5],
                            "val_recall_at_precision": [0.2, 0.4], "val_average_precision": [0.5, 0.6]})
    checkpoint = Checkpoint(tensors={}, backbone="efficientnet_lite0", head={}).to_payload()
    assert not any("epoch" in label for label in legend(plot_training_curves(history, checkpoint)))
