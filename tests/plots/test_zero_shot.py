"""Zero-shot figures from plain points, score arrays and AUROC numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from image_classification.plots.zero_shot import (
    anomaly_score_figure,
    detector_comparison_figure,
    embedding_overlay_figure,
    embedding_overlay_plotly,
)

from .conftest import png_size, texts


def overlay_points(unseen: bool) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    kinds = ["in-distribution (valid)"] * 4 + ["in-distribution (invalid)"] * 4 + (["digit"] * 3 if unseen else [])
    return pd.DataFrame({
        "path": [f"/images/{i}.png" for i in range(len(kinds))], "kind": kinds,
        "split": ["test"] * 8 + ["unseen"] * (len(kinds) - 8), "score": rng.random(len(kinds)),
        "anomaly_score": rng.random(len(kinds)), "accepted_as_valid": [True, False] * (len(kinds) // 2) + [False] * (len(kinds) % 2),
        "pc1": rng.normal(size=len(kinds)), "pc2": rng.normal(size=len(kinds)), "pc3": rng.normal(size=len(kinds)),
    })


def test_overlay_draws_one_scatter_per_kind_with_and_without_unseen_kinds():
    for unseen, kinds in ((True, 3), (False, 2)):
        points = overlay_points(unseen)
        figure = embedding_overlay_figure(points)
        assert len(figure.axes[0].collections) == kinds
        assert "digit (3)" in texts(figure) if unseen else "digit" not in texts(figure)
        assert min(png_size(figure)) > 100
        interactive = embedding_overlay_plotly(points)
        assert sum(len(trace.x) for trace in interactive.data) == len(points)
        assert {trace.legendgroup.split(",")[0] for trace in interactive.data} == set(points["kind"])
        assert "50-d" not in interactive.layout.title.text
        json.loads(interactive.to_json())


def test_anomaly_scores_one_box_per_kind_and_the_threshold():
    scores = {"texture": np.array([0.9, 0.95]), "in-distribution (valid)": np.array([0.1, 0.2, 0.3])}
    figure = anomaly_score_figure(scores, threshold=0.5, detector="knn_pooled", target_tpr=0.98,
                                  calibrated_on="accepted_valid")
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_yticklabels()] == ["in-distribution (valid)", "texture"]
    assert "knn_pooled" in axis.get_xlabel() and "keeps 98% of accepted valid validation images" in texts(figure)
    assert min(png_size(figure)) > 100


def test_no_scored_images_gives_a_figure_that_says_so():
    figure = anomaly_score_figure({}, threshold=0.5, detector="knn_pooled", target_tpr=0.95)
    assert "No test or unseen images" in texts(figure)
    assert min(png_size(figure)) > 50


def test_detector_comparison_bars_per_detector_and_kind():
    auroc = {"knn_pooled": 0.99, "msp": 0.6, "gmm_pooled": 0.95}
    per_kind = {"texture": {"knn_pooled": 1.0, "msp": 0.7, "gmm_pooled": 0.9},
                "digit": {"knn_pooled": 0.98, "msp": 0.5, "gmm_pooled": 1.0}}
    figure = detector_comparison_figure(auroc, per_kind)
    axis = figure.axes[0]
    assert len(axis.patches) == 3 * 3  # all unseen, digit, texture for each detector
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["all unseen", "digit", "texture"]
    assert [label.get_text() for label in axis.get_xticklabels()] == list(auroc)
    assert min(png_size(figure)) > 100


def test_detector_comparison_without_unseen_images_says_why_instead_of_failing():
    figure = detector_comparison_figure({"knn_pooled": None, "msp": None}, {})
    assert "No unseen-kind images" in texts(figure) and not figure.axes[0].patches
    assert min(png_size(figure)) > 100


def test_a_detector_that_could_not_be_measured_says_so_beside_the_measured_ones():
    # a NaN (or None) AUROC draws no bar of height 0 and hides nothing else: its slot says "not measured"
    auroc = {"knn_pooled": 0.99, "fused": float("nan"), "msp": None}
    per_kind = {"digit": {"knn_pooled": 0.98, "fused": float("nan"), "msp": None}}
    figure = detector_comparison_figure(auroc, per_kind)
    axis = figure.axes[0]
    assert texts(figure).count("not measured") == 2
    heights = [patch.get_height() for patch in axis.patches]
    assert heights[0] == 0.99 and all(np.isnan(height) for height in heights[1:3])
    assert min(png_size(figure)) > 100
