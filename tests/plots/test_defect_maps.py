"""Defect map figures from plain images and maps: the gallery, its colour key and the kedro viz view."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go

from image_classification.plots.defect_maps import (
    KEY_LABEL,
    MapPanel,
    defect_map_gallery_figure,
    defect_map_plotly,
    map_caption,
)
from image_classification.plots.evaluation import error_gallery_figure
from image_classification.plots.style import file_caption

from .conftest import png_size, texts

GREY = np.full((40, 60, 3), 128, dtype=np.uint8)
DEFECT_TOP_LEFT = np.array([6.0] + [-6.0] * 15, dtype=np.float32)


def panels() -> list[MapPanel]:
    return [MapPanel("/images/a.png", "score 0.010", GREY, DEFECT_TOP_LEFT),
            MapPanel("/images/unread.png", "score 0.020", GREY, np.full(16, np.nan, np.float32)),
            MapPanel("/images/gone.png", "score 0.030", None, DEFECT_TOP_LEFT)]


def test_a_panel_draws_its_map_over_the_image_and_says_where_it_peaks():
    panel = panels()[0]
    drawn = panel.overlaid()
    assert drawn.shape == GREY.shape and (drawn[:10, :15] != 128).any() and (drawn[30:, 45:] == 128).all()
    assert panels()[1].overlaid() is GREY and not panels()[1].has_map  # an image the backbone could not read
    assert map_caption(DEFECT_TOP_LEFT) == "map peak 1.00 (+6.0)\nat row 0, column 0"
    assert map_caption(None) == "no defect map"


def test_the_gallery_shows_each_image_beside_its_map_with_the_colour_key():
    figure = defect_map_gallery_figure(panels(), "Surest invalid images", "Defect maps of the served fold stack",
                                       per_row=2)
    said = texts(figure)
    assert KEY_LABEL in said and "map value (defect log-odds)" in said
    assert "Defect maps of the served fold stack" in said and "unreadable" in said and "no defect map" in said
    assert "map peak 1.00" in said and "a.png\nscore 0.010" in said
    assert min(png_size(figure)) > 100


def test_without_maps_the_gallery_says_so_and_draws_no_key():
    plain = [MapPanel("a.png", "a.png", GREY)]
    figure = defect_map_gallery_figure(plain, "Surest", "The served score reads no patches: no defect map")
    assert "no defect map" in texts(figure) and KEY_LABEL not in texts(figure)
    assert "no image to show" in texts(defect_map_gallery_figure([], "Surest", "note"))
    assert min(png_size(figure)) > 100


def test_the_error_gallery_draws_maps_over_thumbnails_and_keeps_two_item_rows():
    rows = {"False positives: 2": [(GREY, "a.png", DEFECT_TOP_LEFT), (GREY, "b.png")], "False negatives: 0": []}
    figure = error_gallery_figure(rows, "Errors", "Defect maps of the served patch classifier")
    drawn = [axis.get_images()[0].get_array() for axis in figure.get_axes() if axis.get_images()]
    assert (np.asarray(drawn[0]) != GREY).any() and (np.asarray(drawn[1]) == GREY).all()
    assert KEY_LABEL in texts(figure) and "served patch classifier" in texts(figure)
    assert min(png_size(figure)) > 100


def test_the_interactive_view_has_one_step_per_image_and_a_heat_map_over_each_mapped_one():
    figure = defect_map_plotly(panels(), "Surest", "Defect maps of the served fold stack", size=32)
    figure = go.Figure(json.loads(figure.to_json()))  # what kedro viz reads back
    steps = figure.layout.sliders[0].steps
    assert len(steps) == 3
    kinds = [type(trace).__name__ for trace in figure.data]
    assert kinds == ["Image", "Heatmap", "Image", "Image", "Heatmap"]
    assert [step.args[0]["visible"] for step in steps][0] == [True, True, False, False, False]
    assert [trace.visible for trace in figure.data] == [True, True, False, False, False]
    heatmap = figure.data[1]
    assert np.asarray(heatmap.z).shape == (4, 4) and heatmap.zmin == 0 and heatmap.zmax == 1
    assert np.asarray(heatmap.z)[0, 0] > 0.99 and "map value" in heatmap.hovertemplate
    assert heatmap.dx * 4 == 60 * 32 / 60 and steps[0].args[1]["xaxis.range"] == [0, 32]  # the image, downsampled
    assert "a.png: score 0.010, map peak 1.00 (+6.0) at row 0, column 0" in steps[0].args[1]["title.text"]
    assert len(figure.to_json()) < 50_000
    empty = defect_map_plotly([], "Surest", "note")
    assert not empty.data and "no image to show" in empty.to_json()


def test_a_caption_keeps_the_whole_file_name():
    name = "wafer_2024-03-01_line7_camera2_lot0042_pos13.png"
    caption = file_caption(f"/data/raw/{name}")
    assert caption.replace("\n", "") == name and max(len(line) for line in caption.split("\n")) <= 24
    long = file_caption("x" * 50 + "_middle_" + "y" * 50 + ".jpeg")
    assert long.replace("\n", "").startswith("x" * 35 + "…") and long.endswith(".jpeg")
