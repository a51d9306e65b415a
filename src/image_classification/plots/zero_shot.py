"""Zero-shot figures: where unseen kinds fall in the embedding, the flag detector's scores per
kind, and how well every detector separates unseen kinds from test images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure

from image_classification.plots.style import (
    THRESHOLD_COLOUR,
    category_colour,
    grid,
    say_nothing_to_show,
)

OVERLAY_TITLE = "Test images and unseen kinds in the {} (PCA fitted on train)"
NO_UNSEEN = ("No unseen-kind images in this run, so no detector could be measured.\n"
             "Give data_prep a zero_shot_root, zero_shot_csv or unseen classes.")


def embedding_overlay_figure(points: pd.DataFrame) -> Figure:
    """Test images and unseen kinds on two principal components (columns ``kind``, ``pc1``,
    ``pc2``; in-distribution kinds are named ``in-distribution (...)``), one colour per kind."""
    figure = Figure(figsize=(8, 6.5))
    axis = figure.subplots()
    for index, (kind, group) in enumerate(points.groupby("kind", sort=True)):
        in_distribution = kind.startswith("in-distribution")
        axis.scatter(group["pc1"], group["pc2"], s=14 if in_distribution else 10, alpha=0.75 if in_distribution else 0.55,
                     marker="o" if in_distribution else "^", label=f"{kind} ({len(group)})", color=category_colour(index))
    axis.set(xlabel="PC 1", ylabel="PC 2", title=OVERLAY_TITLE.format("50-d embedding"))
    axis.legend(fontsize="small", markerscale=1.5)
    grid(axis)
    figure.tight_layout()
    return figure


def embedding_overlay_plotly(points: pd.DataFrame) -> go.Figure:
    """Interactive 3D view of the same points (``pc1..pc3``, coloured by ``kind``, symbol by
    ``split``); hover shows ``path``, ``score``, ``anomaly_score`` and ``accepted_as_valid``."""
    import plotly.express as px  # slow to import; only this figure needs it

    interactive = px.scatter_3d(
        points, x="pc1", y="pc2", z="pc3", color="kind", symbol="split", opacity=0.7,
        hover_data={"path": True, "score": ":.3f", "anomaly_score": ":.3f", "accepted_as_valid": True},
        title=OVERLAY_TITLE.format("embedding space"),
    )
    interactive.update_traces(marker_size=3)
    return interactive


CALIBRATED_ON = {"accepted_valid": "accepted valid validation images", "validation": "validation images"}


def anomaly_score_figure(scores_by_kind: dict[str, np.ndarray], threshold: float, detector: str,
                         target_tpr: float, calibrated_on: str = "validation") -> Figure:
    """A box of the flag detector's anomaly scores per kind, with its calibrated threshold
    (which keeps ``target_tpr`` of the validation images ``calibrated_on`` names)."""
    kinds = sorted(scores_by_kind)
    figure = Figure(figsize=(9, 0.55 * len(kinds) + 2))
    axis = figure.subplots()
    if not kinds:
        say_nothing_to_show(axis, "No test or unseen images to score.")
        return figure
    axis.boxplot([scores_by_kind[kind] for kind in kinds], orientation="horizontal", tick_labels=kinds,
                 showfliers=True, flierprops={"markersize": 2})
    axis.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--",
                 label=f"threshold: keeps {target_tpr:.0%} of {CALIBRATED_ON[calibrated_on]}")
    axis.set(xlabel=f"anomaly score ({detector}); right of the line = flagged", title="Anomaly scores per kind")
    axis.legend(loc="lower right", fontsize="small")
    grid(axis, "x")
    figure.tight_layout()
    return figure


def detector_comparison_figure(auroc: dict[str, float | None], auroc_per_kind: dict[str, dict[str, float]]) -> Figure:
    """AUROC (test images vs unseen) of every detector against all unseen images, and per kind.

    Args:
        auroc: detector name -> AUROC against all unseen images; None or NaN where it could not be
            measured: that detector's bar says "not measured", and with none measured a panel says why.
        auroc_per_kind: unseen kind -> detector name -> AUROC against that kind alone (None or NaN: no bar).
    """
    names = list(auroc)
    kinds = sorted(auroc_per_kind)
    figure = Figure(figsize=(max(8, 1.1 * len(names)), 5))
    axis = figure.subplots()
    measured = {name: value for name, value in auroc.items() if _measured(value)}
    if not measured:
        say_nothing_to_show(axis, NO_UNSEEN)
        return figure
    width = 0.8 / (len(kinds) + 1)
    positions = np.arange(len(names))
    axis.bar(positions, [measured.get(name, np.nan) for name in names], width, label="all unseen", color="black")
    for index, kind in enumerate(kinds, start=1):
        values = [auroc_per_kind[kind].get(name) for name in names]
        axis.bar(positions + index * width, [value if _measured(value) else np.nan for value in values], width,
                 label=kind)
    for position, name in zip(positions, names):
        if name not in measured:  # an empty slot would read as an AUROC of 0
            axis.text(position + width * len(kinds) / 2, 0.02, "not measured", rotation=90, ha="center", va="bottom",
                      fontsize="small", color="grey")
    axis.axhline(0.5, color="grey", linewidth=0.8)
    axis.set_xticks(positions + width * len(kinds) / 2, names, rotation=30, ha="right")
    axis.set(ylim=(0, 1.02), ylabel="AUROC (test images vs unseen)", title="Anomaly detectors compared")
    axis.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    grid(axis, "y")
    figure.tight_layout()
    return figure


def _measured(value: float | None) -> bool:
    return value is not None and not np.isnan(value)
