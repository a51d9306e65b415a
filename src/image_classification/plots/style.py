"""The look shared by every figure: colours, markers and a few finishing touches.

Matplotlib figures are made with :class:`~matplotlib.figure.Figure` directly rather than
``pyplot``, so building many of them never accumulates open figures in a long run.
"""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.axes import Axes

# Okabe-Ito colours: distinguishable with every common colour-vision deficiency. One per
# classifier compared in a figure (the model first, then the baseline).
SERIES_COLOURS = ("#0072B2", "#E69F00", "#CC79A7", "#000000", "#56B4E9", "#009E73", "#D55E00")
SERIES_MARKERS = ("o", "s", "^", "v", "D", "P", "X")
PLOTLY_MARKERS = ("circle", "square", "triangle-up", "triangle-down", "diamond", "cross", "x")
# the two classes in the evaluation figures (Okabe-Ito) and in the embedding figures (ColorBrewer Dark2)
CLASS_COLOURS = {"invalid": "#D55E00", "valid": "#009E73"}
LABEL_COLOURS = {"valid": "#1b9e77", "invalid": "#d95f02"}
UNSEEN_COLOUR = "#9e9e9e"
SPLIT_MARKERS = {"train": "o", "val": "^", "test": "s"}
SPLIT_SYMBOLS_3D = {"train": "circle", "val": "diamond", "test": "square"}
# clusters are coloured unlike labels, so a cluster is never mistaken for a label
CLUSTER_COLOURS = ("#1f77b4", "#9467bd", "#d62728", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f",
                   "#393b79", "#637939")
# a single quantity (explained variance, BIC), and the line a reader compares against
SINGLE_COLOUR = "#4c72b0"
HIGHLIGHT_COLOUR = "#c44e52"
THRESHOLD_COLOUR = "crimson"
GRID_ALPHA = 0.3


def category_colour(index: int) -> tuple[float, float, float, float]:
    """The ``index``-th colour of matplotlib's ten-colour cycle (for kinds, whose number varies)."""
    return colormaps["tab10"](index % 10)


def cluster_colour(cluster: int) -> str:
    return CLUSTER_COLOURS[int(cluster) % len(CLUSTER_COLOURS)]


def grid(axis: Axes, which: str = "both") -> None:
    """The faint grid every panel carries."""
    axis.grid(alpha=GRID_ALPHA, axis=which)


def say_nothing_to_show(axis: Axes, message: str) -> None:
    """Replace a panel's contents by a sentence saying why there is nothing to draw."""
    axis.text(0.5, 0.5, message, ha="center", va="center")
    axis.set_axis_off()


def file_caption(path: str, width: int = 24, lines: int = 3) -> str:
    """An image's file name as a caption: whole, cut into lines of ``width`` characters (every character
    kept, spaces included), so a reader can find the file; a name longer than ``lines`` lines keeps its
    start and its end around an ellipsis."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    room = width * lines
    if len(name) > room:
        name = f"{name[:room // 2 - 1]}…{name[-(room - room // 2):]}"
    return "\n".join(name[start:start + width] for start in range(0, len(name), width))
