"""DemoImagesDataset: the demo is built on first use, only when a run asks for it, and never saved over."""

from __future__ import annotations

import pytest
from kedro.io import DatasetError

from image_classification.datasets import DemoImagesDataset


def test_loading_builds_nothing_until_the_demo_is_asked_for(tmp_path):
    dataset = DemoImagesDataset(path=str(tmp_path / "demo"))
    demo_root = dataset.load()
    assert not (tmp_path / "demo").exists() and not dataset.exists()

    root = demo_root()
    assert root == str((tmp_path / "demo").resolve())
    assert dataset.exists()
    assert len(list((tmp_path / "demo" / "labelled" / "valid").iterdir())) == 100
    built = (tmp_path / "demo" / ".demo_version").stat().st_mtime_ns
    assert dataset.load()() == root  # built once, reused
    assert (tmp_path / "demo" / ".demo_version").stat().st_mtime_ns == built


def test_the_demo_cannot_be_saved_over(tmp_path):
    with pytest.raises(DatasetError, match="read-only"):
        DemoImagesDataset(path=str(tmp_path / "demo")).save("some folder")
