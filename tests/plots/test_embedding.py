"""Embedding figures from plain point tables, variance tables and cluster summaries."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from image_classification.plots.embedding import (
    BicCurve,
    ClusterPanel,
    cluster_comparison_figure,
    explained_variance_figure,
    pca_scatter_3d_plotly,
    pca_scatter_figure,
)

from .conftest import png_size, texts

RATIOS = np.array([0.5, 0.3, 0.1, 0.05, 0.05])
VARIANCE = pd.DataFrame({"component": np.arange(1, 6), "explained_variance_ratio": RATIOS, "cumulative": np.cumsum(RATIOS)})
SCORES = {"clusters": 2, "ari": 0.9, "nmi": 0.8, "purity": 0.95, "silhouette": None}


def points(labels: list[str | None]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = len(labels)
    return pd.DataFrame({
        "path": [f"/images/{i}.png" for i in range(n)], "label": pd.array(labels, dtype="string"),
        "kind": [label or "texture" for label in labels],
        "split": pd.array(["unseen" if label is None else ("train", "val", "test")[i % 3] for i, label in enumerate(labels)],
                          dtype="string"),
        "score": rng.random(n), "pc1": rng.normal(size=n), "pc2": rng.normal(size=n), "pc3": rng.normal(size=n),
    })


def test_explained_variance_panels():
    figure = explained_variance_figure(VARIANCE)
    each, cumulative = figure.axes
    assert len(each.patches) == 5 and each.get_yscale() == "log"
    assert cumulative.get_title() == "Cumulative variance of the first components"
    assert min(png_size(figure)) > 100


def test_scatter_names_the_sample_and_the_variance_of_each_axis():
    rows = points(["valid", "invalid"] * 6)
    figure = pca_scatter_figure(rows, VARIANCE, total=100)
    axis = figure.axes[0]
    assert "random 12 of 100 images" in axis.get_title()
    assert axis.get_xlabel() == "PC1 (50.0% of variance)"
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["invalid", "valid", "train", "val", "test"]
    assert "random" not in pca_scatter_figure(rows, None, total=12).axes[0].get_title()
    assert min(png_size(figure)) > 100


def test_3d_scatter_one_trace_per_label_and_split_and_unseen_hidden():
    rows = points(["valid", "invalid"] * 6 + [None] * 3)
    figure = pca_scatter_3d_plotly(rows, VARIANCE, total=len(rows))
    names = [trace.name for trace in figure.data]
    assert names[:3] == ["invalid · train", "invalid · val", "invalid · test"] and len(names) == 7
    assert figure.data[names.index("unseen kinds")].visible == "legendonly"
    assert sum(len(trace.x) for trace in figure.data) == 15
    assert figure.layout.scene.zaxis.title.text == "PC3 (10.0% of variance)"
    json.loads(figure.to_json())


def cluster_inputs(labels: list[str]) -> dict:
    rows = points(labels)
    clusters = rows.assign(cluster=np.arange(len(rows)) % 2)[["pc1", "pc2", "cluster"]]
    centers, covariances = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([np.eye(2), 0.5 * np.eye(2)])
    panels = [ClusterPanel("GMM (k by BIC)", SCORES, clusters, {0: 6, 1: 6}, centers, covariances),
              ClusterPanel("GMM (k = 2)", SCORES, clusters, {0: 6, 1: 6}, centers, covariances),
              ClusterPanel("Agglomerative", SCORES | {"sampled": True, "points": 12}, clusters, {0: 6, 1: 6})]
    counts = {label: [labels.count(label) // 2] * 2 for label in set(labels)}
    composition = pd.DataFrame({"method": "GMM k=2", "cluster": [0, 1], "size": [len(labels) // 2] * 2, **counts})
    return {"rows": rows, "total": len(rows), "panels": panels, "composition": composition,
            "bic": BicCurve({1: 120.0, 2: 100.0, 3: 110.0}, chosen=2, covariance_type="full", highest_k=8)}


def test_cluster_comparison_panels_ellipses_bic_and_composition():
    figure = cluster_comparison_figure(**cluster_inputs(["valid", "invalid"] * 6))
    assert len(figure.axes) == 6
    gmm, _, agglomerative, bic, composition = figure.axes[1:]
    assert len(gmm.patches) == 2 * 2 and not agglomerative.patches  # 1- and 2-sigma ellipses per component
    assert gmm.get_title() == "GMM (k by BIC): k=2\nARI 0.90, NMI 0.80, purity 0.95, silhouette n/a"
    assert "on a sample of 12" in agglomerative.get_title()
    assert "k > 3 not tried" in bic.get_xlabel() and "chosen k = 2" in texts(figure)
    assert len(composition.patches) == 2 * 2  # one bar per cluster and label
    assert min(png_size(figure)) > 100


def test_cluster_comparison_of_a_single_class_still_draws():
    figure = cluster_comparison_figure(**cluster_inputs(["valid"] * 6))
    assert len(figure.axes[5].patches) == 2
    assert min(png_size(figure)) > 100
