"""Embedding figures: variance explained by the principal components, images on the first two
(static) and three (interactive) components, and clusterings compared with the true labels.

Point tables carry ``pc1``, ``pc2`` (``pc3`` in 3D), ``label`` (NA for unseen kinds) and
``split``; the nodes choose which rows to show, so these functions draw every row given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from matplotlib.ticker import PercentFormatter

from image_classification.plots.style import (
    HIGHLIGHT_COLOUR,
    LABEL_COLOURS,
    SINGLE_COLOUR,
    SPLIT_MARKERS,
    SPLIT_SYMBOLS_3D,
    UNSEEN_COLOUR,
    cluster_colour,
    grid,
)


@dataclass(frozen=True)
class ClusterPanel:
    """One clustering, drawn on PC1/PC2.

    Attributes:
        name: how the method is called in the panel's title, e.g. ``GMM (k by BIC)``.
        scores: its agreement with the labels: ``clusters``, ``ari``, ``nmi``, ``purity``,
            ``silhouette`` (None when undefined) and, if it clustered a sample, ``sampled`` and ``points``.
        points: the rows shown: ``pc1``, ``pc2`` and ``cluster`` (an integer).
        sizes: cluster -> number of images in it, over every clustered image (not only those shown).
        centers: mixture components' means on PC1/PC2, shape (k, 2), drawn with their
            1- and 2-sigma ``covariances`` (k, 2, 2); None for a method without components.
    """

    name: str
    scores: Mapping
    points: pd.DataFrame
    sizes: Mapping[int, int]
    centers: np.ndarray | None = None
    covariances: np.ndarray | None = None


@dataclass(frozen=True)
class BicCurve:
    """BIC of a Gaussian mixture per number of components k, the k chosen, and the largest k allowed."""

    bic: Mapping[int, float]
    chosen: int
    covariance_type: str
    highest_k: int


def sample_note(shown: int, total: int) -> str:
    return f"; random {shown:,} of {total:,} images" if shown < total else ""


def _point_size(count: int) -> float:
    return float(np.clip(3000 / max(count, 1), 6, 40))


def _axis_label(variance: pd.DataFrame | None, component: int) -> str:
    if variance is None or component > len(variance):
        return f"PC{component}"
    return f"PC{component} ({variance['explained_variance_ratio'].iloc[component - 1]:.1%} of variance)"


def explained_variance_figure(variance: pd.DataFrame) -> Figure:
    """Variance explained by each principal component (log scale), and cumulatively by the first
    ten (columns ``component``, ``explained_variance_ratio``, ``cumulative``)."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    each, cumulative = figure.subplots(1, 2)
    each.bar(variance["component"], variance["explained_variance_ratio"], color=SINGLE_COLOUR)
    each.set(yscale="log", xlabel="principal component", ylabel="share of variance (log scale)",
             title="Variance explained by each component")
    first = variance.head(10)
    cumulative.plot(first["component"], first["cumulative"], marker="o", color=SINGLE_COLOUR)
    for row in first.itertuples():
        cumulative.annotate(f"{row.cumulative:.{2 if row.cumulative > 0.99 else 1}%}", (row.component, row.cumulative),
                            textcoords="offset points", xytext=(0, -14), ha="center", fontsize="x-small")
    low = float(first["cumulative"].iloc[0])
    cumulative.set(xlabel="number of components", ylabel="cumulative share of variance", xticks=first["component"],
                   ylim=(max(0.0, low - 0.15 * (1 - low) - 0.002), 1 + 0.05 * (1 - low) + 0.0005),
                   title="Cumulative variance of the first components")
    cumulative.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    for axis in (each, cumulative):
        grid(axis)
    figure.suptitle("PCA of the classifier embedding, fitted on the training split")
    return figure


def _scatter_by_label(axis: Axes, rows: pd.DataFrame) -> None:
    size = _point_size(len(rows))
    for (label, split), group in rows.groupby(["label", "split"], observed=True):
        axis.scatter(group["pc1"], group["pc2"], s=size, marker=SPLIT_MARKERS.get(split, "o"),
                     color=LABEL_COLOURS.get(label, UNSEEN_COLOUR), alpha=0.7, linewidths=0)


def _label_legend(axis: Axes, rows: pd.DataFrame) -> None:
    handles = [Line2D([], [], linestyle="", marker="o", color=LABEL_COLOURS.get(label, UNSEEN_COLOUR), label=label)
               for label in sorted(rows["label"].dropna().unique())]
    handles += [Line2D([], [], linestyle="", marker=marker, color="black", markerfacecolor="none", label=split)
                for split, marker in SPLIT_MARKERS.items() if (rows["split"] == split).any()]
    axis.legend(handles=handles, loc="best", fontsize="small", framealpha=0.85)


def pca_scatter_figure(rows: pd.DataFrame, variance: pd.DataFrame | None, total: int) -> Figure:
    """Labelled images on the first two principal components: colour is the label, marker the
    split. ``total`` is how many images ``rows`` was sampled from, named in the title if more."""
    figure = Figure(figsize=(9, 6.5), layout="constrained")
    axis = figure.subplots()
    _scatter_by_label(axis, rows)
    _label_legend(axis, rows)
    axis.set(xlabel=_axis_label(variance, 1), ylabel=_axis_label(variance, 2),
             title="Classifier embeddings on the first two principal components\n"
                   f"PCA fitted on the training split; axes not to the same scale{sample_note(len(rows), total)}")
    grid(axis)
    return figure


def pca_scatter_3d_plotly(rows: pd.DataFrame, variance: pd.DataFrame | None, total: int) -> go.Figure:
    """Interactive 3D scatter of the first three principal components; hover shows ``path``,
    label (or ``kind`` for unseen kinds), ``score`` and split. Unseen kinds are one faint trace,
    hidden until clicked in the legend."""
    figure = go.Figure()
    order = {split: i for i, split in enumerate(SPLIT_SYMBOLS_3D)}
    rows = rows.assign(trace=rows["label"].fillna("unseen"), split_order=rows["split"].map(order))
    for (label, _, split), group in rows.groupby(["trace", "split_order", "split"], observed=True, dropna=False):
        unseen = label == "unseen"
        described = "kind: %{customdata[1]} (unseen)" if unseen else f"label: {label}"
        figure.add_trace(go.Scatter3d(
            x=group["pc1"], y=group["pc2"], z=group["pc3"], mode="markers",
            name="unseen kinds" if unseen else f"{label} · {split}", visible="legendonly" if unseen else True,
            marker={"size": 2.5 if unseen else 3.5, "color": LABEL_COLOURS.get(label, UNSEEN_COLOUR),
                    "symbol": SPLIT_SYMBOLS_3D.get(split, "circle"), "opacity": 0.35 if unseen else 0.85},
            customdata=np.stack([group["path"].astype(str), group["kind"].astype(str), group["split"].astype(str),
                                 group["score"].map("{:.4f}".format)], axis=1),
            hovertemplate=("%{customdata[0]}<br>" + described +
                           "<br>score: %{customdata[3]}<br>split: %{customdata[2]}<extra></extra>"),
        ))
    axes = {f"{name}axis": {"title": {"text": _axis_label(variance, i + 1)}} for i, name in enumerate(("x", "y", "z"))}
    figure.update_layout(
        title=f"Classifier embeddings, first three principal components{sample_note(len(rows), total)}",
        scene=axes, legend={"itemsizing": "constant"}, margin={"l": 0, "r": 0, "t": 50, "b": 0}, template="plotly_white",
    )
    return figure


def _draw_ellipses(axis: Axes, centers: np.ndarray, covariances: np.ndarray) -> None:
    """Each mixture component as 1- and 2-sigma ellipses, keeping the view on the points."""
    limits = axis.get_xlim(), axis.get_ylim()
    for index, (center, covariance) in enumerate(zip(centers, covariances, strict=True)):
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        angle = np.degrees(np.arctan2(eigenvectors[1, -1], eigenvectors[0, -1]))
        colour = cluster_colour(index)
        for sigmas, style in ((1, "-"), (2, "--")):
            width, height = 2 * sigmas * np.sqrt(np.clip(eigenvalues[::-1], 0, None))
            axis.add_patch(Ellipse(center, width, height, angle=angle, fill=False, color=colour,
                                   linestyle=style, linewidth=1.4))
        axis.plot(*center, marker="X", color=colour, markeredgecolor="black", markersize=9)
    axis.set_xlim(*limits[0])
    axis.set_ylim(*limits[1])


def _draw_clusters(axis: Axes, panel: ClusterPanel) -> None:
    """Points coloured by cluster; the legend gives each cluster's size among all clustered images."""
    size = _point_size(len(panel.points))
    for cluster, group in panel.points.groupby("cluster"):
        axis.scatter(group["pc1"], group["pc2"], s=size, color=cluster_colour(cluster),
                     alpha=0.7, linewidths=0, label=f"cluster {int(cluster)} (n={panel.sizes[cluster]:,})")
    axis.legend(loc="best", fontsize="x-small", framealpha=0.85, markerscale=1.5)
    if panel.centers is not None:
        _draw_ellipses(axis, panel.centers, panel.covariances)
    scores = panel.scores
    silhouette = "n/a" if scores["silhouette"] is None else f"{scores['silhouette']:.2f}"
    sampled = f" on a sample of {scores['points']:,}" if scores.get("sampled") else ""
    axis.set_title(f"{panel.name}: k={scores['clusters']}{sampled}\nARI {scores['ari']:.2f}, NMI {scores['nmi']:.2f}, "
                   f"purity {scores['purity']:.2f}, silhouette {silhouette}")


def _draw_bic(axis: Axes, curve: BicCurve) -> None:
    bic = {int(k): v for k, v in curve.bic.items()}
    axis.plot(list(bic), list(bic.values()), marker="o", color=SINGLE_COLOUR)
    if curve.chosen in bic:
        axis.plot(curve.chosen, bic[curve.chosen], marker="o", markersize=12, fillstyle="none", color=HIGHLIGHT_COLOUR,
                  label=f"chosen k = {curve.chosen}")
        axis.legend(loc="best", fontsize="small")
    untried = curve.highest_k > max(bic)
    axis.set(xlabel="number of mixture components k" + (f"  (k > {max(bic)} not tried: BIC was rising)" if untried else ""),
             ylabel="BIC (lower is better)", title=f"GMM model selection ({curve.covariance_type} covariance)")
    axis.set_xticks(list(bic))


def _draw_composition(axis: Axes, composition: pd.DataFrame) -> None:
    """One bar per cluster (rows: ``method``, ``cluster``, ``size`` and a count per label), split by label share."""
    names = [f"{r.method} · cluster {r.cluster} (n={r.size:,})" for r in composition.itertuples()]
    left = np.zeros(len(composition))
    for label, colour in LABEL_COLOURS.items():
        if label in composition:
            share = composition[label].to_numpy(float) / composition["size"].to_numpy(float)
            axis.barh(np.arange(len(names)), share, left=left, color=colour, label=label)
            left += share
    axis.set_yticks(np.arange(len(names)), names, fontsize="small")
    axis.invert_yaxis()
    axis.xaxis.set_major_formatter(PercentFormatter(1.0))
    axis.set(xlim=(0, 1), title="Label composition of each cluster")
    axis.legend(loc="lower right", fontsize="small", framealpha=0.85)


def cluster_comparison_figure(rows: pd.DataFrame, total: int, panels: list[ClusterPanel], bic: BicCurve,
                              composition: pd.DataFrame) -> Figure:
    """Side by side on PC1/PC2: the true labels of ``rows`` (sampled from ``total`` images) and
    three clusterings; below, the BIC curve and each cluster's label composition."""
    figure = Figure(figsize=(17, 10.5), layout="constrained")
    axes = figure.subplots(2, 3)
    _scatter_by_label(axes[0, 0], rows)
    _label_legend(axes[0, 0], rows)
    axes[0, 0].set_title("True labels")
    scatters = (axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0])
    for axis, panel in zip(scatters[1:], panels, strict=True):
        _draw_clusters(axis, panel)
    for axis in scatters:
        axis.set(xlabel="PC1", ylabel="PC2")
        grid(axis)
    _draw_bic(axes[1, 1], bic)
    _draw_composition(axes[1, 2], composition)
    figure.suptitle("Clusters of the classifier embedding vs the true labels"
                    + sample_note(len(rows), total) + "; ellipses: 1 and 2 sigma", fontsize="large")
    return figure
