"""The three ways in (folder tree, CSV, class folders) and the errors a user meets on each."""

from __future__ import annotations

import pytest

from image_classification.demo import DemoFolder
from image_classification.sources import SourceError, read_class_folders, read_labels_csv, read_source

from .conftest import make_folder_tree


def write_csv(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_folder_tree_reads_labels_and_unseen_kinds(tmp_path):
    root = make_folder_tree(tmp_path / "tree", valid=3, invalid=2, unseen={"texture": 2})
    (root / "valid" / "notes.txt").write_text("not an image")
    (root / "valid" / ".DS_Store").write_bytes(b"\0")
    candidates, skipped = read_source(
        {"kind": "folder_tree", "root": str(root), "zero_shot_root": str(root / "unseen")}, "unused"
    )
    assert candidates["label"].isna().sum() == 2
    assert (candidates["label"] == "valid").sum() == 3
    assert (candidates["label"] == "invalid").sum() == 2
    assert set(candidates.loc[candidates["label"].isna(), "kind"]) == {"texture"}
    assert [s["path"].endswith("notes.txt") for s in skipped] == [True]


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(SourceError, match=f"'valid' images '{tmp_path}/valid' is not a folder"):
        read_source({"kind": "folder_tree", "root": str(tmp_path)}, "unused")


def test_csv_labels_are_normalised_and_paths_resolved(tmp_path):
    csv = write_csv(
        tmp_path / "labels.csv",
        "path,label,split,group\nimgs/a.jpg,Valid,train,g1\nimgs/b.jpg,0,,\n/abs/c.jpg,TRUE,test,\nd.jpg,false,,g1\n",
    )
    candidates, _ = read_labels_csv(csv)
    assert list(candidates["label"]) == ["valid", "invalid", "valid", "invalid"]
    assert candidates["path"].iloc[0] == str(tmp_path / "imgs" / "a.jpg")
    assert candidates["path"].iloc[2] == "/abs/c.jpg"
    assert list(candidates["split"].fillna("-")) == ["train", "-", "test", "-"]
    assert list(candidates["group"].fillna("-")) == ["g1", "-", "-", "g1"]


def test_csv_with_unseen_kinds(tmp_path):
    labels = write_csv(tmp_path / "labels.csv", "path,label\na.jpg,1\n")
    unseen = write_csv(tmp_path / "unseen.csv", "path,kind\nx.jpg,texture\ny.jpg,digit\n")
    candidates, _ = read_labels_csv(labels, unseen)
    assert list(candidates["kind"]) == ["valid", "texture", "digit"]
    assert candidates["label"].isna().sum() == 2


def test_csv_class_column_gives_each_image_its_fine_class(tmp_path):
    # zero_shot's class-conditional detectors read the finer class; an empty cell keeps the label
    labels = write_csv(tmp_path / "labels.csv", "path,label,class\na.jpg,1,truck\nb.jpg,0, cat \nc.jpg,1,\n")
    candidates, _ = read_labels_csv(labels)
    assert list(candidates["kind"]) == ["truck", "cat", "valid"]
    assert list(candidates["label"]) == ["valid", "invalid", "valid"]
    assert "class" not in candidates.columns


@pytest.mark.parametrize(
    ("text", "encoding", "message"),
    [
        ("", "utf-8", "is empty"),
        ("path,label\n", "utf-8", "no rows"),
        ("path,class\na.jpg,1\n", "utf-8", r"no column \['label'\]"),
        ("path,label\na.jpg,1\nb.jpg,maybe\n", "utf-8", "line 3: label 'maybe'"),
        ("path,label\na.jpg,1\nb.jpg,0\na.jpg,0\n", "utf-8", r"more than once \(lines 2, 4\)"),
        ("path,label,split\na.jpg,1,training\n", "utf-8", "line 2: split 'training'"),
        ("path,label\ncaf\u00e9.jpg,1\n", "latin-1", "not UTF-8"),
        ("path,label\n,1\n", "utf-8", "line 2: the path is empty"),
    ],
)
def test_bad_csv_stops_with_the_row_and_the_fix(tmp_path, text, encoding, message):
    csv = write_csv(tmp_path / "labels.csv", text, encoding)
    with pytest.raises(SourceError, match=message):
        read_labels_csv(csv)


def test_csv_in_its_own_label_words_is_read_through_the_labels_setting(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", "path,label\na.jpg,good\nb.jpg,BAD\nc.jpg, Good \nd.jpg,0\n")
    source = {"kind": "csv", "csv": csv, "labels": {"Good": "valid", "bad": "INVALID"}}
    candidates, _ = read_source(source, "unused")
    assert list(candidates["label"]) == ["valid", "invalid", "valid", "invalid"]
    assert list(candidates["kind"]) == ["valid", "invalid", "valid", "invalid"]


def test_an_unknown_label_names_the_labels_setting(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", "path,label\na.jpg,good\nb.jpg,ugly\n")
    with pytest.raises(SourceError, match="line 3: label 'ugly' is not one of .* data_prep.source.labels"):
        read_labels_csv(csv, labels={"good": "valid"})


@pytest.mark.parametrize(("labels", "message"), [
    ({"good": "fine"}, "data_prep.source.labels.good is 'fine'; each word must map to valid or invalid"),
    ({True: "valid"}, "quote it"),
    (["good"], "it maps words to valid or invalid"),
])
def test_a_bad_labels_setting_is_refused(tmp_path, labels, message):
    csv = write_csv(tmp_path / "labels.csv", "path,label\na.jpg,good\n")
    with pytest.raises(SourceError, match=message):
        read_labels_csv(csv, labels=labels)


def test_missing_csv_names_the_parameter(tmp_path):
    with pytest.raises(SourceError, match="data_prep.source.csv"):
        read_labels_csv(str(tmp_path / "absent.csv"))


def test_csv_through_an_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/remote/labels.csv", b"path,label\nimgs/a.jpg,valid\n")
    fs.pipe("/remote/imgs/a.jpg", b"image bytes")
    candidates, _ = read_labels_csv("memory://remote/labels.csv")
    path = candidates["path"].iloc[0]
    assert path.startswith("memory://")
    with fsspec.open(path, "rb") as stream:  # resolved against the CSV's remote folder
        assert stream.read() == b"image bytes"


def test_class_folders_with_mapping(tmp_path):
    root = tmp_path / "classes"
    make_folder_tree(root / "x", valid=0, invalid=0, unseen={"cat": 2, "ship": 3, "frog": 1, "other": 1})
    candidates, _ = read_class_folders(str(root / "x" / "unseen"), {"valid": "ship", "invalid": ["cat"], "unseen": ["frog"]})
    assert (candidates["label"] == "valid").sum() == 3
    assert (candidates["label"] == "invalid").sum() == 2
    assert list(candidates.loc[candidates["label"].isna(), "kind"]) == ["frog"]


def test_class_folders_typo_lists_what_exists(tmp_path):
    root = make_folder_tree(tmp_path / "x", valid=1, invalid=1)
    with pytest.raises(SourceError, match=r"\['valdi'\].*\['invalid', 'valid'\]"):
        read_class_folders(str(root), {"valid": ["valdi"], "invalid": ["invalid"]})


def test_unknown_source_kind():
    with pytest.raises(SourceError, match="folder_tree"):
        read_source({"kind": "s3_bucket"}, "unused")


def test_class_folders_can_take_more_unseen_kinds_from_another_root(tmp_path):
    classes = make_folder_tree(tmp_path / "a", valid=0, invalid=0, unseen={"cat": 2, "ship": 2})
    far = make_folder_tree(tmp_path / "b", valid=0, invalid=0, unseen={"digit": 2})
    candidates, _ = read_source(
        {"kind": "class_folders", "root": str(classes / "unseen"), "zero_shot_root": str(far / "unseen"),
         "class_map": {"valid": ["ship"], "invalid": ["cat"]}},
        "unused",
    )
    assert list(candidates.loc[candidates["label"].isna(), "kind"]) == ["digit", "digit"]


def test_a_path_inside_the_demo_builds_the_demo_first(tmp_path):
    # conf/cifar10_dev reads the demo's far unseen kinds from data/01_raw/demo/unseen, which a
    # fresh clone does not have until something builds the demo
    demo = DemoFolder(tmp_path / "data" / "01_raw" / "demo")
    root = make_folder_tree(tmp_path / "classes", valid=2, invalid=2)
    source = {"kind": "class_folders", "root": str(root), "zero_shot_root": str(demo.path / "unseen"),
              "class_map": {"valid": ["valid"], "invalid": ["invalid"]}}
    candidates, _ = read_source(source, demo)
    assert set(candidates.loc[candidates["label"].isna(), "kind"]) == {"digit", "photo", "texture"}
    assert (candidates["label"] == "valid").sum() == 2


def test_a_source_outside_the_demo_never_builds_it(tmp_path):
    demo = DemoFolder(tmp_path / "demo")
    root = make_folder_tree(tmp_path / "tree", valid=2, invalid=2, unseen={"texture": 1})
    read_source({"kind": "folder_tree", "root": str(root), "zero_shot_root": str(root / "unseen")}, demo)
    assert not demo.path.exists()


def test_fine_classes_are_the_kinds_only_when_finer_than_the_labels():
    import numpy as np
    import pandas as pd

    from image_classification.sources import fine_classes

    index = pd.DataFrame({"label": ["valid", "valid", "invalid", "invalid", None],
                          "kind": ["truck", "airplane", "cat", "cat", "frog"]})
    names, codes = fine_classes(index, np.arange(4))  # the unseen frog is not a training row
    assert names == ["airplane", "cat", "truck"] and codes.tolist() == [2, 0, 1, 1]
    assert fine_classes(index.assign(kind=index["label"]), np.arange(4)) == ([], None)
    assert fine_classes(index.drop(columns="kind"), np.arange(4)) == ([], None)
