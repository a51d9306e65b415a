"""Defect map figures: images with the map of where a score sees a defect drawn over them
(:mod:`image_classification.defect_maps`), as a static gallery with its colour key and as an
interactive plotly view for kedro viz. Every map is drawn on one fixed scale, the defect probability of
a patch (the sigmoid of the map's value), so that a clean image looks clean and two maps compare.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from PIL import Image

from image_classification import defect_maps
from image_classification.plots.style import file_caption

KEY_LABEL = "defect probability of a patch = sigmoid(map value), one fixed scale; at most 0.5 is left clear"
KEY_LOG_ODDS = (0, 1, 2, 3, 4)  # the map values marked on the key
PREVIEW_SIZE = 128


@dataclass(frozen=True)
class MapPanel:
    """One image of a map gallery: its path (or file name), a caption (its score), the upright thumbnail
    (None: it could not be read) and its map (None: no map is drawn; all NaN: the backbone could not read
    the image)."""

    name: str
    caption: str
    image: np.ndarray | None
    values: np.ndarray | None = None

    @property
    def has_map(self) -> bool:
        return self.values is not None and bool(np.isfinite(self.values).all())

    def overlaid(self) -> np.ndarray | None:
        """The thumbnail with its map drawn over it; the plain thumbnail when there is no map."""
        if self.image is None or not self.has_map:
            return self.image
        return defect_maps.overlay(self.image, self.values)


def map_caption(values: np.ndarray | None) -> str:
    """Where a map peaks and how high: the patch (row, column from the top-left) and its defect probability."""
    if values is None or not np.isfinite(values).all():
        return "no defect map"
    value, row, column = defect_maps.peak(values)
    return f"map peak {float(defect_maps.defect_probability(value)):.2f} ({value:+.1f})\nat row {row}, column {column}"


def wrap_note(note: str, width: int) -> str:
    """A long note (whose map, in what units) cut into lines of about ``width`` characters."""
    return "\n".join(textwrap.wrap(note, width)) if note else ""


def draw_overlay_key(axis: Axes) -> None:
    """The overlay's colour bar: what each colour means, as defect probability and as map value."""
    probability, strip = defect_maps.overlay_key()
    axis.imshow(strip, aspect="auto", extent=(0.0, 1.0, 0.0, 1.0))
    axis.set(yticks=[], xlim=(0.0, 1.0), xticks=[0.0, 0.25, 0.5, 0.75, 1.0])
    axis.tick_params(labelsize=7)
    axis.set_xlabel(KEY_LABEL, fontsize=7.5)
    top = axis.secondary_xaxis("top")
    top.set_xticks([float(defect_maps.defect_probability(k)) for k in KEY_LOG_ODDS], [str(k) for k in KEY_LOG_ODDS])
    top.tick_params(labelsize=7)
    top.set_xlabel("map value (defect log-odds)", fontsize=7.5)


def add_overlay_key(subfigure: Figure | SubFigure) -> None:
    """The colour key centred in a (short) subfigure."""
    draw_overlay_key(subfigure.add_axes((0.2, 0.45, 0.6, 0.22)))


def _frame(axis: Axes, image: np.ndarray | None, caption: str, title: str = "") -> None:
    axis.set(xticks=[], yticks=[])
    if image is None:
        axis.text(0.5, 0.5, "unreadable", ha="center", va="center", color="grey", transform=axis.transAxes)
    else:
        axis.imshow(image)
    axis.set_xlabel(caption, fontsize=7)
    if title:
        axis.set_title(title, fontsize=7.5)


def defect_map_gallery_figure(panels: list[MapPanel], title: str, note: str, per_row: int = 4) -> Figure:
    """Each image twice, plain and with its map drawn over it, ``per_row`` pairs to a row, under
    ``title`` and a line ``note`` saying whose map it is (or why there is none); the colour key below
    when any map is drawn."""
    rows = max(1, math.ceil(len(panels) / per_row))
    keyed = any(panel.has_map for panel in panels)
    figure = Figure(figsize=(1.7 * 2 * per_row, 2.5 * rows + 1.0 + 1.1 * keyed), layout="constrained")
    figure.suptitle(f"{title}\n{wrap_note(note, 24 * per_row)}", fontsize=10)
    parts = np.atleast_1d(figure.subfigures(rows + keyed, 1, height_ratios=[2.5] * rows + [1.1] * keyed))
    for row, subfigure in enumerate(parts[:rows]):
        axes = subfigure.subplots(1, 2 * per_row)
        for index, (plain, drawn) in enumerate(zip(axes[::2], axes[1::2])):
            position = row * per_row + index
            if position >= len(panels):
                plain.set_axis_off(), drawn.set_axis_off()
                if position == 0:
                    plain.text(0, 0.5, "no image to show", va="center", color="grey", transform=plain.transAxes)
                continue
            panel = panels[position]
            _frame(plain, panel.image, f"{file_caption(panel.name)}\n{panel.caption}", "image")
            if panel.has_map:
                _frame(drawn, panel.overlaid(), map_caption(panel.values), "defect map")
            else:  # the image again would only repeat its neighbour
                drawn.set(xticks=[], yticks=[])
                drawn.set_box_aspect(1 if panel.image is None else panel.image.shape[0] / panel.image.shape[1])
                drawn.text(0.5, 0.5, "no defect map" if panel.values is None else "no defect map:\nno patch vectors",
                           ha="center", va="center", color="grey", fontsize=8, transform=drawn.transAxes)
    if keyed:
        add_overlay_key(parts[-1])
    return figure


def defect_map_plotly(panels: list[MapPanel], title: str, note: str, size: int = PREVIEW_SIZE) -> go.Figure:
    """The images one at a time (a slider steps through them), each downsampled to ``size`` pixels with
    its map as a heat map over it on the overlay's colours (clear at most 0.5); hovering a patch shows
    its defect probability and map value."""
    figure = go.Figure()
    layouts, shown = [], []
    note = wrap_note(note, 120).replace("\n", "<br>")
    for panel in panels:
        image = _downsample(panel.image, size)
        height, width = image.shape[:2]
        start = len(figure.data)
        name = file_caption(panel.name, width=200, lines=1)
        # pixel centres at half-pixels, so that the image spans 0..width like the map's cells
        figure.add_trace(go.Image(source=_png_uri(image), x0=0.5, y0=0.5, hoverinfo="skip", name=name, visible=False))
        if panel.has_map:
            figure.add_trace(_heatmap(panel.values, name, height, width))
        shown.append(range(start, len(figure.data)))
        layouts.append({"title.text": f"{title}<br><sub>{note}<br>{name}: {panel.caption.replace(chr(10), ', ')}, "
                                      f"{map_caption(panel.values).replace(chr(10), ' ')}</sub>",
                        "xaxis.range": [0, width], "yaxis.range": [height, 0]})
    visible = [[index in traces for index in range(len(figure.data))] for traces in shown]
    top = 70 + 22 * (note.count("<br>") + 2)  # room for the title, the note and the image's line
    figure.update_layout(template="plotly_white", margin={"t": top}, title={"text": f"{title}<br><sub>{note}</sub>", "yref": "container", "y": 0.98, "yanchor": "top"},
                         xaxis={"visible": False, "constrain": "domain"},
                         yaxis={"visible": False, "scaleanchor": "x", "autorange": "reversed"})
    if not panels:
        figure.add_annotation(text="no image to show", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return figure
    for trace, on in zip(figure.data, visible[0]):
        trace.visible = on
    figure.update_layout(**layouts[0], sliders=[{
        "active": 0, "currentvalue": {"prefix": "image "}, "pad": {"t": 10},
        "steps": [{"label": str(number), "method": "update", "args": [{"visible": on}, layout]}
                  for number, (on, layout) in enumerate(zip(visible, layouts), start=1)],
    }])
    return figure


def _heatmap(values: np.ndarray, name: str, height: int, width: int) -> go.Heatmap:
    """A map as cells over an image of ``height`` x ``width`` pixels, on the overlay's colours."""
    values = defect_maps.as_grid(values)
    grid = values.shape[0]
    cells = [[f"row {row}, column {column}" for column in range(grid)] for row in range(grid)]
    return go.Heatmap(
        z=np.round(defect_maps.defect_probability(values), 4), customdata=np.round(values, 3), text=cells,
        x0=width / grid / 2, dx=width / grid, y0=height / grid / 2, dy=height / grid, zmin=0.0, zmax=1.0,
        colorscale=overlay_colorscale(), name=name,
        colorbar={"title": {"text": "defect<br>probability", "side": "right"}, "tickvals": [0, 0.5, 0.75, 1]},
        hovertemplate="patch %{text}<br>defect probability %{z:.3f}<br>map value %{customdata:.2f}<extra></extra>",
    )


def overlay_colorscale(steps: int = 21) -> list[list]:
    """The overlay's colours and opacities (:func:`image_classification.defect_maps.overlay_colours`) as
    a plotly colour scale over defect probability 0..1."""
    probability = np.linspace(0.0, 1.0, steps)
    colours, alpha = defect_maps.overlay_colours(probability)
    return [[float(p), f"rgba({r * 255:.0f},{g * 255:.0f},{b * 255:.0f},{a:.3f})"]
            for p, (r, g, b), a in zip(probability, colours, alpha)]


def _downsample(image: np.ndarray | None, size: int) -> np.ndarray:
    """An RGB copy at most ``size`` pixels a side (a grey square for an unreadable image)."""
    if image is None:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    small = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    small.thumbnail((size, size))
    return np.asarray(small)


def _png_uri(image: np.ndarray) -> str:
    """An image as a PNG data URI: far smaller in plotly's JSON than a list of pixel values."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
