"""The evaluate figures that show defect maps: the error gallery and the defect map gallery, on the tiny
evaluate inputs (every invalid image holds one patch, number 3, far from anything a valid one holds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from image_classification.artefacts import FeatureCache
from image_classification.images import thumbnail
from image_classification.patches import PatchClassifier
from image_classification.pipelines.evaluate.nodes import (
    THUMBNAIL_SIZE,
    draw_defect_map_gallery,
    draw_error_gallery,
)
from image_classification.plots.defect_maps import KEY_LABEL
from image_classification.scorers import ServedScore

from ...plots.conftest import png_size, texts
from .conftest import UNREADABLE, small_config

MODEL_POINT = {"threshold": 0.5}  # the model reads no patches


@pytest.fixture
def patch_classifier(evaluation_inputs) -> dict:
    """The patch classifier fitted on the train images' patch vectors, as the operating point carries it."""
    index, cache = evaluation_inputs["image_index"], FeatureCache.from_payload(evaluation_inputs["backbone_features"])
    train = np.flatnonzero((index["split"] == "train").to_numpy())
    fitted = PatchClassifier.fit(cache.patches[torch.as_tensor(train)].float(), index["target"].to_numpy(int, na_value=0)[train],
                                 epochs=30, hidden=8, top_k=1)
    return fitted.to_payload(4)


@pytest.fixture
def patch_point(patch_classifier) -> dict:
    return {"threshold": 0.5, "candidate": "patch_classifier", "served_weights": patch_classifier,
            "backbone": "efficientnet_lite0"}


@pytest.fixture
def evaluation_scores(evaluation_inputs) -> pd.DataFrame:
    """Validation and test images, invalid ones scored low (the later, the lower), valid ones high."""
    index = evaluation_inputs["image_index"]
    table = index[index["split"].isin(["val", "test"])][["path", "split", "label", "target"]].reset_index(drop=True)
    invalid = (table["target"] == 0).to_numpy()
    score = np.where(invalid, 0.4 - 0.01 * np.arange(len(table)), 0.9).astype(np.float32)
    return table.assign(score=score, patch_classifier_score=score, error="")


def errors_of(evaluation_inputs) -> pd.DataFrame:
    """Two invalid test images called valid, and the valid image the backbone could not read, missed."""
    index = evaluation_inputs["image_index"]
    invalid_test = index[(index["split"] == "test") & (index["target"] == 0)]["path"].tolist()[:2]
    return pd.DataFrame({"split": ["test", "test", "val"], "path": [*invalid_test, index["path"][UNREADABLE]],
                         "error": ["false_positive", "false_positive", "false_negative"], "score": [0.9, 0.8, 0.1]})


def drawn_images(figure) -> list[np.ndarray]:
    """The images drawn, in order, the colour key left out."""
    return [np.asarray(axis.get_images()[0].get_array()) for axis in figure.get_axes()
            if axis.get_images() and axis.get_xlabel() != KEY_LABEL]


def test_the_served_score_s_maps_of_indexed_images_come_from_the_feature_cache(evaluation_inputs, patch_point):
    index, features = evaluation_inputs["image_index"], evaluation_inputs["backbone_features"]
    served, rows = ServedScore.of(patch_point), np.array([20, UNREADABLE, 3])
    maps = served.defect_maps_of_index(index, features, rows)
    cache = FeatureCache.from_payload(features)
    want = PatchClassifier.from_payload(patch_point["served_weights"]).patch_logits(cache.patches[[20, 3]]).numpy()
    np.testing.assert_allclose(maps[[0, 2]], want, rtol=1e-5, atol=1e-5)
    assert np.isnan(maps[1]).all()  # the backbone could not read it: no map
    assert ServedScore.of(MODEL_POINT).defect_maps_of_index(index, features, rows) is None


def test_the_error_gallery_draws_the_served_score_s_map_over_each_error(evaluation_inputs, patch_point):
    gaps = errors_of(evaluation_inputs)
    figure = draw_error_gallery(gaps, patch_point, small_config(), evaluation_inputs["backbone_features"],
                                evaluation_inputs["image_index"])
    plain = [thumbnail(path, THUMBNAIL_SIZE) for path in gaps["path"]]
    drawn = drawn_images(figure)
    assert len(drawn) == 3
    assert all((image != thumbnail).any() for image, thumbnail in zip(drawn[:2], plain[:2]))  # invalid: a defect drawn
    assert (drawn[2] == plain[2]).all()  # the backbone could not read it: the plain thumbnail
    said = texts(figure)
    assert "Defect maps of the served patch classifier" in said and KEY_LABEL in said
    assert gaps["path"][0].rsplit("/", 1)[-1] in said.replace("\n", "")  # the whole file name
    assert min(png_size(figure)) > 100


def test_the_error_gallery_says_no_defect_map_when_the_served_score_reads_no_patches(evaluation_inputs):
    gaps = errors_of(evaluation_inputs)
    figure = draw_error_gallery(gaps, MODEL_POINT, small_config(), evaluation_inputs["backbone_features"],
                                evaluation_inputs["image_index"])
    assert all((image == thumbnail(path, THUMBNAIL_SIZE)).all() for image, path in zip(drawn_images(figure), gaps["path"]))
    assert "The served score (the model) reads no patches and no patch score was fitted beside it: no defect map" in \
        texts(figure).replace("\n", " ")
    assert KEY_LABEL not in texts(figure)


def test_the_defect_map_gallery_shows_the_surest_invalid_test_images_with_their_maps(evaluation_inputs, patch_point,
                                                                                     evaluation_scores):
    figure, preview = draw_defect_map_gallery(evaluation_scores, patch_point, evaluation_inputs["backbone_features"],
                                              evaluation_inputs["image_index"], small_config(gallery_size=3))
    invalid_test = evaluation_scores[(evaluation_scores["split"] == "test") & (evaluation_scores["target"] == 0)]
    surest = invalid_test.sort_values("patch_classifier_score")["path"].head(3).tolist()
    said = texts(figure)
    assert all(path.rsplit("/", 1)[-1] in said for path in surest)
    assert "Defect maps of the served patch classifier" in said and KEY_LABEL in said and said.count("map peak") == 3
    assert len(drawn_images(figure)) == 6  # each image plain and with its map
    assert min(png_size(figure)) > 100
    preview = go.Figure(json.loads(preview.to_json()))  # as kedro viz reads it back
    steps = preview.layout.sliders[0].steps
    assert len(steps) == 3 and [type(trace).__name__ for trace in preview.data] == ["Image", "Heatmap"] * 3
    assert [surest[i].rsplit("/", 1)[-1] in steps[i].args[1]["title.text"] for i in range(3)] == [True] * 3


def test_where_the_served_score_reads_no_patches_the_gallery_draws_the_patch_classifier_s_map_and_says_so(
        evaluation_inputs, patch_classifier, evaluation_scores):
    """The operating point of a model carries the fitted patch classifier to explain it (as
    choose_operating_point writes it): its maps are drawn, said to be not the served score's."""
    inputs = (evaluation_inputs["backbone_features"], evaluation_inputs["image_index"])
    explained = MODEL_POINT | {"defect_map": {"candidate": "patch_classifier", "weights": patch_classifier}}
    figure, preview = draw_defect_map_gallery(evaluation_scores, explained, *inputs, small_config(gallery_size=3))
    assert "The patch classifier's map (not the served score's: the model reads no patches)" in texts(figure)
    assert sum(type(trace).__name__ == "Heatmap" for trace in preview.data) == 3
    figure, preview = draw_defect_map_gallery(evaluation_scores, MODEL_POINT, *inputs, small_config(gallery_size=3))
    assert "The served score (the model) reads no patches and no patch score was fitted beside it: no defect map" in \
        texts(figure).replace("\n", " ")
    assert KEY_LABEL not in texts(figure) and len(drawn_images(figure)) == 3
    assert len(preview.layout.sliders[0].steps) == 3 and {type(trace).__name__ for trace in preview.data} == {"Image"}
    assert "no defect map" in preview.layout.title.text
