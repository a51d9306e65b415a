"""Training curves from a plain history table."""

from __future__ import annotations

import pandas as pd

from image_classification.plots.training import training_curves_figure

from .conftest import png_size

HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.55],
                        "val_recall_at_precision": [0.2, 0.6, 0.5], "val_average_precision": [0.6, 0.8, 0.7]})


def test_loss_and_validation_panels_with_the_best_epoch_marked():
    figure = training_curves_figure(HISTORY, best_epoch=2)
    loss, validation = figure.axes
    assert (loss.get_title(), validation.get_title()) == ("Loss", "Validation")
    assert len(loss.get_lines()) == 2 and len(validation.get_lines()) == 3
    assert "best epoch 2 (restored)" in [text.get_text() for text in validation.get_legend().get_texts()]
    assert min(png_size(figure)) > 100


def test_an_empty_history_still_draws_without_a_best_epoch():
    figure = training_curves_figure(HISTORY.iloc[:0], best_epoch=None)
    assert len(figure.axes[1].get_lines()) == 2
    assert min(png_size(figure)) > 100
