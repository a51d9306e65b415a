"""data_prep nodes on tiny generated images and hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from image_classification.duplicates import near_duplicate_pairs
from image_classification.pipelines.data_prep.nodes import (
    _duplicate_report,
    check_images,
    group_duplicates,
    list_image_candidates,
    split_images,
    summarise_splits,
    build_image_index,
)
from image_classification.sources import SourceError

from ...conftest import make_folder_tree, noise_image, png_bytes, write_files

CHECKS = {"min_side": 16, "max_pixels": 10_000_000, "workers": 2}
FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}


def grouped_table(labels: list[str], groups: list[int], splits: list | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"img_{i}.png" for i in range(len(labels))],
        "label": pd.array(labels, dtype="string"),
        "kind": pd.array(labels, dtype="string"),
        "split": pd.array(splits or [None] * len(labels), dtype="string"),
        "group": pd.array([None] * len(labels), dtype="string"),
        "split_group": groups,
    })


def test_check_images_keeps_good_and_reports_bad(tmp_path, bad_image_folder):
    root = make_folder_tree(tmp_path / "tree", valid=4, invalid=3)
    for bad in bad_image_folder.iterdir():
        (root / "valid" / bad.name).symlink_to(bad)
    candidates, skipped = list_image_candidates({"kind": "folder_tree", "root": str(root)}, "unused")
    checked, rejected = check_images(candidates, skipped, CHECKS)
    assert len(checked) == 7
    assert len(rejected) == len(list(bad_image_folder.iterdir()))
    assert rejected["reason"].str.len().gt(0).all()
    assert {"sha256", "phash", "width", "height"} <= set(checked.columns)


def test_exact_duplicates_share_a_group_and_conflicting_labels_are_rejected(tmp_path):
    same = png_bytes(noise_image(1))
    other = png_bytes(noise_image(2))
    write_files(tmp_path / "valid", {"a.png": same, "b.png": same, "c.png": other})
    write_files(tmp_path / "invalid", {"d.png": other, "e.png": png_bytes(noise_image(3))})
    candidates, skipped = list_image_candidates({"kind": "folder_tree", "root": str(tmp_path)}, "unused")
    checked, rejected = check_images(candidates, skipped, CHECKS)
    grouped, rejected, report = group_duplicates(checked, rejected, max_distance=2)
    names = grouped["path"].str.rsplit("/", n=1).str[-1].tolist()
    assert sorted(names) == ["a.png", "b.png", "e.png"]
    groups = dict(zip(names, grouped["split_group"]))
    assert groups["a.png"] == groups["b.png"] != groups["e.png"]
    assert sorted(rejected["path"].str.rsplit("/", n=1).str[-1]) == ["c.png", "d.png"]
    assert (report["type"] == "exact").sum() == 1


def test_near_duplicates_are_found_by_perceptual_hash(tmp_path):
    base = noise_image(5, size=(64, 64))
    write_files(tmp_path / "valid", {"a.png": png_bytes(base), "b.png": png_bytes(base.resize((48, 48)))})
    write_files(tmp_path / "invalid", {"c.png": png_bytes(noise_image(6, size=(64, 64)))})
    candidates, skipped = list_image_candidates({"kind": "folder_tree", "root": str(tmp_path)}, "unused")
    checked, rejected = check_images(candidates, skipped, CHECKS)
    grouped, _, report = group_duplicates(checked, rejected, max_distance=4)
    assert grouped["split_group"].nunique() == 2
    assert list(report["type"]) == ["near"]


def test_near_duplicate_search_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, size=300).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips, base[:50] ^ flips[:50] ^ (flips[:50] >> np.uint64(1))])
    hexes = pd.Series([f"{int(h):016x}" for h in hashes])
    found = {tuple(p) for p in near_duplicate_pairs(hexes, 2)}
    brute = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 2
    }
    assert found == brute and len(brute) >= 300


def test_split_is_stratified_and_exact_on_fractions():
    labels = ["valid"] * 100 + ["invalid"] * 50
    split = split_images(grouped_table(labels, list(range(150))), FRACTIONS, seed=42)
    counts = split.groupby(["label", "split"]).size()
    assert counts["valid"].to_dict() == {"train": 70, "val": 20, "test": 10}
    assert counts["invalid"].to_dict() == {"train": 35, "val": 10, "test": 5}


def test_groups_stay_whole_and_seed_changes_the_split():
    labels = ["valid"] * 60 + ["invalid"] * 60
    groups = [i // 6 for i in range(120)]  # the same object photographed six times
    first = split_images(grouped_table(labels, groups), FRACTIONS, seed=42)
    assert first.groupby("split_group")["split"].nunique().max() == 1
    again = split_images(grouped_table(labels, groups), FRACTIONS, seed=42)
    other = split_images(grouped_table(labels, groups), FRACTIONS, seed=7)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()


def test_manual_splits_are_honoured_for_the_whole_group():
    labels = ["valid"] * 10 + ["invalid"] * 10
    splits = ["test", None] + [None] * 18
    split = split_images(grouped_table(labels, [0, 0] + list(range(1, 19)), splits), FRACTIONS, seed=1)
    assert split["split"].iloc[:2].tolist() == ["test", "test"]


def test_clashing_manual_splits_in_one_group_stop_the_run():
    table = grouped_table(["valid"] * 6, [0, 0, 1, 2, 3, 4], ["train", "test", None, None, None, None])
    with pytest.raises(SourceError, match="different splits"):
        split_images(table, FRACTIONS, seed=1)


def test_too_few_images_of_a_class_is_a_clear_error():
    table = grouped_table(["valid"] * 10 + ["invalid"] * 2, list(range(12)))
    with pytest.raises(SourceError, match="label 'invalid' has only 2 image"):
        split_images(table, FRACTIONS, seed=1)


@pytest.mark.parametrize(
    "fractions",
    [{"train": -0.1, "val": 0.6, "test": 0.5}, {"train": 0.7, "val": 0.2, "test": 0.2}, {"train": 1.0, "val": 0.0, "test": 0.0}],
)
def test_impossible_fractions_are_refused(fractions):
    with pytest.raises(SourceError, match="data_prep.split"):
        split_images(grouped_table(["valid", "invalid"] * 5, list(range(10))), fractions, seed=1)


def test_unseen_images_get_their_own_split_and_the_summary_counts_them():
    table = grouped_table(["valid"] * 5 + ["invalid"] * 5, list(range(10)))
    unseen = grouped_table(["x"] * 3, [10, 11, 12]).assign(
        label=pd.array([None] * 3, dtype="string"), kind=pd.array(["digit"] * 3, dtype="string")
    )
    table = pd.concat([table, unseen], ignore_index=True).assign(
        sha256="0" * 64, phash="0" * 16, width=32, height=32
    )
    index = build_image_index(split_images(table, FRACTIONS, seed=3))
    assert (index["split"] == "unseen").sum() == 3
    assert index.loc[index["split"] != "unseen", "target"].tolist() == [1] * 5 + [0] * 5
    rejected = pd.DataFrame({"path": ["x.jpg"], "label": ["valid"], "kind": ["valid"], "reason": ["empty file (0 bytes)"]})
    report = pd.DataFrame(columns=["type", "path", "duplicate_path", "label", "duplicate_label", "labels_differ"])
    summary = summarise_splits(index, rejected, report)
    assert summary["unseen_kinds"] == {"digit": 3}
    assert summary["rejected_by_reason"] == {"empty file (0 bytes)": 1}
    assert sum(summary["per_split"][s]["valid"] for s in ("train", "val", "test")) == 5


def test_duplicate_report_rows_and_label_conflicts():
    images = pd.DataFrame({
        "path": [f"/images/{name}.png" for name in "abcdef"],
        "sha256": ["s1", "s1", "s2", "s3", "s4", "s5"],
        "label": pd.array(["valid", "valid", "invalid", None, None, "valid"], dtype="string"),
    })
    exact = np.array([[0, 1]])
    near = np.array([[0, 1], [0, 2], [2, 3], [3, 4], [1, 5]])  # (0, 1) has the same bytes: exact only
    report = _duplicate_report(images, exact, near)
    assert report[["type", "path", "duplicate_path"]].values.tolist() == [
        ["exact", "/images/a.png", "/images/b.png"],
        ["near", "/images/a.png", "/images/c.png"],
        ["near", "/images/c.png", "/images/d.png"],
        ["near", "/images/d.png", "/images/e.png"],
        ["near", "/images/b.png", "/images/f.png"],
    ]
    # valid/valid no, valid/invalid yes, labelled/unlabelled yes, unlabelled/unlabelled no
    assert report["labels_differ"].tolist() == [False, True, True, False, False]
    assert report["label"].isna().tolist() == [False, False, False, True, False]
    empty = _duplicate_report(images, np.empty((0, 2), dtype=np.int64), np.empty((0, 2), dtype=np.int64))
    assert empty.empty and list(empty.columns) == list(report.columns)
