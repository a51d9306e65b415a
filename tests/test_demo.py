"""The built-in demo teaches: besides clean faces and non-faces it holds hard (blurred, faded) faces and
images filed under the wrong class, so the first run's figures show real errors instead of 1.00
everywhere; its unseen kinds stay as they were (conf/cifar10_dev reads them as far kinds)."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from image_classification.demo import _demo_images

from .test_run import latest


@pytest.fixture(scope="module")
def demo_images():
    return _demo_images()


def names(images: dict, folder: str, prefix: str) -> list[str]:
    return [path for path in images if path.startswith(f"labelled/{folder}/{prefix}_")]


def test_the_labelled_demo_holds_hard_and_mislabelled_images_among_clean_ones(demo_images):
    labelled = collections.Counter(path.split("/")[1] for path in demo_images if path.startswith("labelled/"))
    assert labelled == {"valid": 100, "invalid": 100}
    assert len(names(demo_images, "valid", "hard_blurred_face")) == 8
    assert len(names(demo_images, "invalid", "mislabelled_face")) == 4
    assert len(names(demo_images, "valid", "mislabelled_nonface")) == 4

    def contrast(paths: list[str]) -> float:
        return float(np.mean([np.asarray(demo_images[path], dtype=float).std() for path in paths]))

    # the hard faces are faded: well under the contrast of the clean ones
    assert contrast(names(demo_images, "valid", "hard_blurred_face")) < 0.5 * contrast(names(demo_images, "valid", "face"))
    pixels = [np.asarray(image).tobytes() for path, image in demo_images.items() if path.startswith("labelled/")]
    assert len(set(pixels)) == len(pixels)  # no file twice: data_prep would reject conflicting duplicates


def test_the_unseen_kinds_are_those_cifar10_dev_reads(demo_images):
    kinds = collections.Counter(path.split("/")[1] for path in demo_images if path.startswith("unseen/"))
    assert kinds == {"texture": 60, "digit": 60, "photo": 40}


@pytest.mark.slow
def test_no_score_separates_the_demo_perfectly_so_its_figures_show_errors(demo_run):
    held_out = pd.read_parquet(latest(demo_run / "data/07_model_output/out_of_fold_scores.parquet"))
    columns = [column for column in held_out.columns if column.endswith("score") and held_out[column].notna().all()]
    assert "fold_stack_score" in columns and "score" in columns
    for column in columns:
        assert roc_auc_score(held_out["target"], held_out[column]) < 0.995, column
