"""The whole data_prep pipeline on an in-memory catalog."""

from __future__ import annotations

from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from image_classification.datasets import DemoImagesDataset
from image_classification.pipelines.data_prep import create_pipeline

from ...conftest import KeptDataset, BAD_FILES, make_folder_tree, write_files



def test_data_prep_runs_on_an_in_memory_catalog(tmp_path):
    root = make_folder_tree(tmp_path / "tree", valid=10, invalid=10, unseen={"digit": 3, "texture": 2})
    write_files(root / "invalid", {name: make() for name, make in BAD_FILES.items()})
    params = {
        "params:data_prep.source": {"kind": "folder_tree", "root": str(root), "zero_shot_root": str(root / "unseen")},
        "params:data_prep.image_checks": {"min_side": 16, "max_pixels": 10_000_000, "workers": 2},
        "params:data_prep.near_duplicate_max_distance": 2,
        "params:data_prep.split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "params:seed": 42,
        "params:runtime.dask": None,  # in this process
    }
    outputs = ("image_index", "rejected_images", "duplicate_report", "split_summary")
    catalog = DataCatalog({name: MemoryDataset(value) for name, value in params.items()})
    catalog["demo_images"] = DemoImagesDataset(path=str(tmp_path / "demo"))
    for name in outputs:
        catalog[name] = KeptDataset()
    SequentialRunner().run(create_pipeline(), catalog)

    index = catalog.load("image_index")
    assert len(index) == 25
    assert index.loc[index["split"] != "unseen"].groupby("split").size().to_dict() == {"train": 12, "val": 4, "test": 4}
    assert sorted(index.loc[index["split"] == "unseen", "kind"].unique()) == ["digit", "texture"]
    assert len(catalog.load("rejected_images")) == len(BAD_FILES)
    summary = catalog.load("split_summary")
    assert summary["per_split"]["train"] == {"valid": 6, "invalid": 6}
    assert summary["rejected"] == len(BAD_FILES)
    assert not (tmp_path / "demo").exists()  # the user's own images: the demo is never built
