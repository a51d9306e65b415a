"""Evaluation figures from plain targets, scores and thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from image_classification.plots.evaluation import (
    ScoredSplit,
    confusion_matrix_figure,
    error_gallery_figure,
    precision_recall_figure,
    precision_recall_plotly,
    roc_figure,
    roc_plotly,
    score_histogram_figure,
    score_histogram_plotly,
)

from .conftest import png_size, texts

BOTH = np.array([1, 1, 1, 0, 0, 0]), np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1])
ONE_CLASS = np.array([0, 0, 0]), np.array([0.9, 0.2, 0.1])


def series(targets: np.ndarray, scores: np.ndarray) -> list[ScoredSplit]:
    return [ScoredSplit("model", targets, scores, 0.5), ScoredSplit("baseline", targets, np.clip(scores - 0.05, 0, 1), 0.45)]


def test_operating_point_counts_and_undefined_rates():
    fpr, recall, precision = ScoredSplit("model", *BOTH, threshold=0.5).operating_point()
    assert (fpr, recall, precision) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    fpr, recall, precision = ScoredSplit("model", *ONE_CLASS, threshold=0.5).operating_point()
    assert fpr == pytest.approx(1 / 3) and math.isnan(recall) and precision == 0.0


@pytest.mark.parametrize("data", [BOTH, ONE_CLASS], ids=["both classes", "one class"])
def test_curves_and_operating_points(data):
    curves = 2 if ScoredSplit("model", *data, 0.5).has_both_classes else 0
    items = series(*data)
    figure = precision_recall_figure(items, target_precision=0.9)
    assert figure.axes[0].get_title() == f"Precision-recall, test split ({len(data[0])} images, {int(sum(data[0]))} valid)"
    assert len(figure.axes[0].get_lines()) == 1 + curves + 2  # target line, curves, operating points
    assert "target precision 0.90" in texts(figure)
    interactive = precision_recall_plotly(items, target_precision=0.9)
    assert len(interactive.data) == curves + 2
    assert [trace.name for trace in interactive.data][-1] == "baseline operating point"
    json.loads(interactive.to_json())
    roc = roc_figure(items)
    assert len(roc.axes[0].get_lines()) == 1 + curves + 2
    assert ("AUROC" in texts(roc)) == bool(curves)
    assert len(roc_plotly(items).data) == 1 + curves + 2
    for static in (figure, roc):
        assert min(png_size(static)) > 100


def test_histograms_one_panel_per_split_even_when_a_class_is_missing():
    panels = {"val": ScoredSplit("model", *BOTH, 0.5), "test": ScoredSplit("model", *ONE_CLASS, 0.5)}
    figure = score_histogram_figure(panels)
    assert [axis.get_title() for axis in figure.axes] == ["val (6 images)", "test (3 images)"]
    assert "truly valid (0)" in texts(figure)
    interactive = score_histogram_plotly(panels)
    assert len(interactive.data) == 2 * 2 and interactive.data[0].showlegend and not interactive.data[2].showlegend
    assert min(png_size(figure)) > 100


def test_confusion_matrices_show_their_counts():
    counts = {"true_negatives": 5, "false_positives": 1, "false_negatives": 2, "true_positives": 7}
    figure = confusion_matrix_figure({"model": counts, "baseline": dict.fromkeys(counts, 0)})
    assert [axis.get_title() for axis in figure.axes] == ["model", "baseline"]
    assert sorted(text.get_text() for text in figure.axes[0].texts) == ["1", "2", "5", "7"]
    assert min(png_size(figure)) > 100


def test_gallery_draws_thumbnails_unreadable_frames_and_empty_rows():
    thumbnail = np.zeros((8, 10, 3), dtype=np.uint8)
    rows = {"False positives: 2": [(thumbnail, "a.png"), (None, "gone.png")], "False negatives: 0": []}
    figure = error_gallery_figure(rows, "Model errors")
    assert len([axis for axis in figure.get_axes() if axis.get_images()]) == 1
    assert "unreadable" in texts(figure) and "none" in texts(figure)
    assert [subfigure._suptitle.get_text() for subfigure in figure.subfigs] == list(rows)
    assert min(png_size(figure)) > 100


def test_every_threshold_a_figure_shows_tells_a_threshold_near_one_from_one():
    # a threshold of 0.99999702 drawn as "1.000" (or hovered as "1.0000") says nothing is called valid
    items = [ScoredSplit("model", *BOTH, threshold=0.99999702)]
    for figure in (precision_recall_figure(items, target_precision=0.9), roc_figure(items)):
        assert "model at threshold 0.99999702" in texts(figure) and "1.000" not in texts(figure)
    panels = {"model, test split": items[0]}
    assert "threshold 0.99999702" in texts(score_histogram_figure(panels))
    assert "threshold 0.99999702" in score_histogram_plotly(panels).to_json()
