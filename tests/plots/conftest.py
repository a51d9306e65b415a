"""Helpers for the figure tests: every test here also checks that no pyplot figure was left open."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from PIL import Image


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """Plot functions build Figure objects directly: pyplot's registry must stay empty."""
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a plot function opened a pyplot figure"


def png_size(figure: Figure) -> tuple[int, int]:
    """Render the figure (which fails on a broken one) and return the PNG's size in pixels."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=40)
    return Image.open(buffer).size


def texts(figure: Figure) -> str:
    """Every title, label and text of the figure, for asserting on what it says."""
    return " | ".join(text.get_text() for text in figure.findobj(lambda artist: hasattr(artist, "get_text")))
