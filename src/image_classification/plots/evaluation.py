"""Evaluation figures, built from scores and thresholds: precision-recall, ROC, score histograms,
confusion matrices and the error gallery (with defect maps, :mod:`.defect_maps`). Interactive plotly for
kedro-viz, static matplotlib for reports. Pure functions of arrays; images arrive already decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from plotly.subplots import make_subplots
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from image_classification.metrics import format_threshold
from image_classification.plots.defect_maps import MapPanel, add_overlay_key, wrap_note
from image_classification.plots.style import (
    CLASS_COLOURS,
    PLOTLY_MARKERS,
    SERIES_COLOURS,
    SERIES_MARKERS,
    grid,
)


@dataclass(frozen=True)
class ScoredSplit:
    """One classifier's scores on one split, and the threshold it calls valid at (``>=``)."""

    name: str
    targets: np.ndarray
    scores: np.ndarray
    threshold: float

    @property
    def has_both_classes(self) -> bool:
        return 0 < int(np.sum(self.targets)) < len(self.targets)

    def operating_point(self) -> tuple[float, float, float]:
        """(false positive rate, recall, precision) at the threshold; NaN where undefined."""
        targets = np.asarray(self.targets).astype(bool)
        called = np.asarray(self.scores) >= self.threshold
        true_positives = int(np.sum(called & targets))
        return (_ratio(int(np.sum(called & ~targets)), int(np.sum(~targets))),
                _ratio(true_positives, int(np.sum(targets))), _ratio(true_positives, int(np.sum(called))))


def _ratio(top: int, bottom: int) -> float:
    return top / bottom if bottom else float("nan")


def _finish_rates(axis: Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title, labels and limits of a panel whose axes are both rates in [0, 1]."""
    axis.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.02, 1.02), ylim=(-0.02, 1.04))
    grid(axis)
    axis.legend(loc="lower left", fontsize="small", framealpha=0.9)


def _split_title(kind: str, series: list[ScoredSplit], split: str) -> str:
    first = series[0]
    return f"{kind}, {split} split ({len(first.targets)} images, {int(np.sum(first.targets))} valid)"


def precision_recall_figure(series: list[ScoredSplit], target_precision: float, split: str = "test") -> Figure:
    """Precision-recall curves, each classifier's operating point, and the target precision."""
    figure = Figure(figsize=(7, 5.5))
    axis = figure.subplots()
    axis.axhline(target_precision, color="grey", linestyle=":", label=f"target precision {target_precision:.2f}")
    for index, item in enumerate(series):
        colour, line = SERIES_COLOURS[index], "-" if index == 0 else "--"
        if item.has_both_classes:
            precision, recall, _ = precision_recall_curve(item.targets, item.scores)
            axis.plot(recall, precision, drawstyle="steps-post", color=colour, linestyle=line, label=item.name)
        _, recall_at, precision_at = item.operating_point()
        axis.plot(recall_at, precision_at, SERIES_MARKERS[index], color=colour, markersize=max(11 - 2 * index, 4),
                  markeredgecolor="black", label=f"{item.name} at threshold {format_threshold(item.threshold)}: "
                                                 f"P {precision_at:.2f}, R {recall_at:.2f}")
    _finish_rates(axis, _split_title("Precision-recall", series, split), "recall", "precision")
    figure.tight_layout()
    return figure


def precision_recall_plotly(series: list[ScoredSplit], target_precision: float, split: str = "test") -> go.Figure:
    """Interactive precision-recall curves; hovering a curve shows the threshold of each point."""
    figure = go.Figure()
    for index, item in enumerate(series):
        colour = SERIES_COLOURS[index]
        if item.has_both_classes:
            precision, recall, thresholds = precision_recall_curve(item.targets, item.scores)
            figure.add_scatter(x=recall, y=precision, customdata=np.r_[thresholds, np.nan], name=item.name,
                               line={"color": colour, "shape": "hv", "dash": "solid" if index == 0 else "dash"},
                               hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<br>threshold %{customdata:.8~g}")
        _, recall_at, precision_at = item.operating_point()
        _add_operating_point(figure, index, item, recall_at, precision_at, "recall %{x:.3f}<br>precision %{y:.3f}")
    figure.add_hline(y=target_precision, line={"color": "grey", "dash": "dot"},
                     annotation_text=f"target precision {target_precision:.2f}", annotation_position="bottom left")
    figure.update_layout(title=_split_title("Precision-recall", series, split), xaxis_title="recall",
                         yaxis_title="precision", xaxis_range=[-0.02, 1.02], yaxis_range=[-0.02, 1.04],
                         template="plotly_white", legend={"x": 0.01, "y": 0.01, "xanchor": "left", "yanchor": "bottom"})
    return figure


def roc_figure(series: list[ScoredSplit], split: str = "test") -> Figure:
    """ROC curves with AUROC and each classifier's operating point."""
    figure = Figure(figsize=(7, 5.5))
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    for index, item in enumerate(series):
        colour, line = SERIES_COLOURS[index], "-" if index == 0 else "--"
        if item.has_both_classes:
            false_positive_rate, true_positive_rate, _ = roc_curve(item.targets, item.scores)
            area = auc(false_positive_rate, true_positive_rate)
            axis.plot(false_positive_rate, true_positive_rate, color=colour, linestyle=line,
                      label=f"{item.name} (AUROC {area:.3f})")
        fpr_at, recall_at, _ = item.operating_point()
        axis.plot(fpr_at, recall_at, SERIES_MARKERS[index], color=colour, markersize=max(11 - 2 * index, 4),
                  markeredgecolor="black", label=f"{item.name} at threshold {format_threshold(item.threshold)}")
    _finish_rates(axis, _split_title("ROC", series, split), "false positive rate (invalid called valid)",
           "recall (true positive rate)")
    axis.legend(loc="lower right", fontsize="small", framealpha=0.9)
    figure.tight_layout()
    return figure


def roc_plotly(series: list[ScoredSplit], split: str = "test") -> go.Figure:
    """Interactive ROC curves; hovering a curve shows the threshold of each point."""
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "grey", "dash": "dot"})
    for index, item in enumerate(series):
        colour = SERIES_COLOURS[index]
        if item.has_both_classes:
            false_positive_rate, true_positive_rate, thresholds = roc_curve(item.targets, item.scores)
            finite = np.where(np.isfinite(thresholds), thresholds, np.nan)  # the first point calls nothing valid
            figure.add_scatter(x=false_positive_rate, y=true_positive_rate, customdata=finite, name=item.name,
                               line={"color": colour, "dash": "solid" if index == 0 else "dash"},
                               hovertemplate="false positive rate %{x:.3f}<br>recall %{y:.3f}<br>"
                                             "threshold %{customdata:.8~g}")
        fpr_at, recall_at, _ = item.operating_point()
        _add_operating_point(figure, index, item, fpr_at, recall_at, "false positive rate %{x:.3f}<br>recall %{y:.3f}")
    figure.update_layout(title=_split_title("ROC", series, split), xaxis_title="false positive rate",
                         yaxis_title="recall (true positive rate)", xaxis_range=[-0.02, 1.02],
                         yaxis_range=[-0.02, 1.04], template="plotly_white",
                         legend={"x": 0.99, "y": 0.01, "xanchor": "right", "yanchor": "bottom"})
    return figure


def _add_operating_point(figure: go.Figure, index: int, item: ScoredSplit, x: float, y: float, hover: str) -> None:
    """A classifier's operating point as a marker that names its threshold on hover."""
    figure.add_scatter(x=[x], y=[y], mode="markers", name=f"{item.name} operating point",
                       marker={"color": SERIES_COLOURS[index], "size": max(14 - 3 * index, 4), "symbol": PLOTLY_MARKERS[index],
                               "line": {"color": "black", "width": 1}},
                       hovertemplate=f"threshold {format_threshold(item.threshold)}<br>{hover}")


HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)


def score_histogram_figure(panels: dict[str, ScoredSplit]) -> Figure:
    """One panel per split: scores of truly valid and truly invalid images, threshold drawn."""
    figure = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axis, (title, item) in zip(axes, panels.items(), strict=True):
        targets = np.asarray(item.targets).astype(bool)
        for label, mask in (("invalid", ~targets), ("valid", targets)):
            axis.hist(item.scores[mask], bins=HISTOGRAM_BINS, color=CLASS_COLOURS[label], alpha=0.6,
                      edgecolor="white", label=f"truly {label} ({int(mask.sum())})")
        axis.axvline(item.threshold, color="black", linestyle="--",
                     label=f"threshold {format_threshold(item.threshold)}")
        axis.set(title=f"{title} ({len(targets)} images)", xlabel="score (probability of valid)", xlim=(0, 1))
        grid(axis)
        axis.legend(loc="upper center", fontsize="small")
    axes[0].set_ylabel("images")
    figure.tight_layout()
    return figure


def score_histogram_plotly(panels: dict[str, ScoredSplit]) -> go.Figure:
    """Interactive score histograms per true class, one panel per split, threshold drawn."""
    figure = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                           subplot_titles=[f"{title} ({len(item.targets)} images)" for title, item in panels.items()])
    for column, item in enumerate(panels.values(), start=1):
        targets = np.asarray(item.targets).astype(bool)
        for label, mask in (("invalid", ~targets), ("valid", targets)):
            figure.add_histogram(x=item.scores[mask], name=f"truly {label}", legendgroup=label, showlegend=column == 1,
                                 marker_color=CLASS_COLOURS[label], opacity=0.6, xbins={"start": 0, "end": 1, "size": 0.05},
                                 row=1, col=column)
        figure.add_vline(x=item.threshold, line={"color": "black", "dash": "dash"}, row=1, col=column,
                         annotation_text=f"threshold {format_threshold(item.threshold)}")
    figure.update_layout(barmode="overlay", template="plotly_white", title="Scores per true class")
    figure.update_xaxes(title_text="score (probability of valid)", range=[0, 1])
    figure.update_yaxes(title_text="images", col=1)
    return figure


def confusion_matrix_figure(panels: dict[str, dict]) -> Figure:
    """Confusion matrices side by side, from counts ``true_negatives`` ... ``true_positives``."""
    figure = Figure(figsize=(4.2 * len(panels), 4.0))
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axis, (title, counts) in zip(axes, panels.items(), strict=True):
        matrix = np.array([[counts["true_negatives"], counts["false_positives"]],
                           [counts["false_negatives"], counts["true_positives"]]])
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (row, column), count in np.ndenumerate(matrix):
            dark = count > 0.6 * matrix.max()
            axis.text(column, row, str(count), ha="center", va="center", fontsize=16,
                      color="white" if dark else "black")
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["invalid", "valid"], yticklabels=["invalid", "valid"],
                 xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    return figure


def error_gallery_figure(rows: dict[str, list[tuple]], title: str, note: str = "") -> Figure:
    """A grid of thumbnails, one row per kind of error under its own heading, each with a caption.

    An item is ``(thumbnail, caption)`` or ``(thumbnail, caption, defect map)``: a map is drawn over its
    thumbnail (:func:`~image_classification.defect_maps.overlay`) and the colour key goes below. A
    thumbnail of ``None`` (an image that can no longer be read) is drawn as an empty frame saying so;
    an empty row says "none". ``note``, under the title, says whose maps are drawn, or why none are.
    """
    columns = max([len(items) for items in rows.values()] + [4])
    panels = {heading: [MapPanel("", item[1], item[0], item[2] if len(item) > 2 else None) for item in items]
              for heading, items in rows.items()}
    keyed = any(panel.has_map for items in panels.values() for panel in items)
    figure = Figure(figsize=(1.8 * columns, 2.8 * len(rows) + 0.6 + 1.1 * keyed), layout="constrained")
    figure.suptitle(f"{title}\n{wrap_note(note, 16 * columns)}" if note else title, fontsize=12 if not note else 11)
    parts = np.atleast_1d(figure.subfigures(len(rows) + keyed, 1, height_ratios=[2.8] * len(rows) + [1.1] * keyed))
    for subfigure, (heading, items) in zip(parts[:len(rows)], panels.items(), strict=True):
        subfigure.suptitle(heading, fontsize=10, x=0.01, ha="left", fontweight="bold")
        for axis, index in zip(subfigure.subplots(1, columns), range(columns), strict=True):
            axis.set(xticks=[], yticks=[])
            for spine in axis.spines.values():
                spine.set_visible(index < len(items))
            if index >= len(items):
                if index == 0:
                    axis.text(0.5, 0.5, "none", ha="center", va="center", color="grey", transform=axis.transAxes)
                continue
            thumbnail = items[index].overlaid()
            if thumbnail is None:
                axis.text(0.5, 0.5, "unreadable", ha="center", va="center", color="grey", transform=axis.transAxes)
            else:
                axis.imshow(thumbnail)
            axis.set_xlabel(items[index].caption, fontsize=7.5)
    if keyed:
        add_overlay_key(parts[-1])
    return figure
