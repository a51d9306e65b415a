"""Bad tables and parameters stop a whole Kedro run early, before any expensive work, with a
message that names the value and the fix.

Parameters are checked by Kedro when they load (typed dataclasses on node inputs): no node may
start. A broken CSV is found by data_prep's first node, before a single image is decoded.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pandas as pd
import pytest
from click.testing import CliRunner
from kedro.framework.cli.project import run as kedro_run

import image_classification.images as images_module

from ..conftest import cli_params, noise_image, png_bytes, write_files
from .conftest import FAST_SETTINGS, inside, latest, make_project, run_session


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tables")
    for label, shift in (("valid", 128), ("invalid", 0)):
        write_files(root / "images" / label, {f"{label}_{i}.png": png_bytes(noise_image(500 + i + shift, (24, 24)))
                                              for i in range(4)})
    return make_project(root / "project", {**FAST_SETTINGS, "data_prep": {
        "source": {"kind": "folder_tree", "root": str(root / "images")}}})


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """Counts every image decode during the test."""
    calls: list[int] = []
    original = images_module.decode_rgb

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(images_module, "decode_rgb", counting)
    return calls


# ----------------------------------------------------------------------------- parameters

BAD_PARAMETERS = [
    # (pipelines, --params, fragments the message must contain: the value, and what is allowed)
    (None, "model.backbone=resnet9000", ["'resnet9000'", "efficientnet_lite0, efficientnet_lite2, mobilenet_v2"]),
    (["train"], "model.weights=imagenet21k", ["imagenet21k", "imagenet", "none"]),
    (["evaluate"], "evaluate.target_precision=1.5", ["got 1.5", "(0, 1]"]),
    (None, "target_precision=0", ["got 0", "(0, 1]", "Parameter 'train'", "Parameter 'evaluate'"]),
    (["data_prep"], "data_prep.split.train=-0.5", ["data_prep.split.train is -0.5", "strictly between 0 and 1"]),
    (["data_prep"], "data_prep.split.train=0.9", ["add up to 1.2000", "train + val + test = 1"]),
    (["zero_shot"], "zero_shot.flag_detector=knn_pixels", ["'knn_pixels'", "knn_pooled"]),
]


UNREAD_PARAMETERS = [
    # (--params, fragments the message must contain): a key no step reads, a location the demo kind ignores;
    # refused by the ParameterCheck hook, which looks at the whole tree whatever the pipelines
    ("data_prep.sorce.kind=folder_tree,data_prep.sorce.root=/x",
     ["unknown parameter 'data_prep.sorce' (did you mean 'data_prep.source'?)"]),
    ("train.epohcs=3,evaluate.rulle=point",
     ["'train.epohcs' (did you mean 'train.epochs'?)", "'evaluate.rulle' (did you mean 'evaluate.rule'?)"]),
    ("data_prep.source.kind=demo", ["data_prep.source.root is set", "kind is 'demo'",
                                    "set data_prep.source.kind=folder_tree (or class_folders)"]),
    ("predict.source.root=/data/new", ["predict.source.root is set", "set predict.source.kind=folder_tree"]),
]
REFUSED_PARAMETERS = [(pipelines, params, "ParameterValidationError", fragments)
                      for pipelines, params, fragments in BAD_PARAMETERS]
REFUSED_PARAMETERS += [(None, params, "ParameterError", fragments) for params, fragments in UNREAD_PARAMETERS]


@pytest.mark.parametrize(("pipelines", "params", "error", "fragments"), REFUSED_PARAMETERS,
                         ids=[f"{p}-{'+'.join(ps or ['default'])}" for ps, p, _, _ in REFUSED_PARAMETERS])
def test_an_impossible_parameter_stops_the_run_before_any_node(project, monkeypatch, decoded, tally,
                                                                pipelines, params, error, fragments):
    versions_before = sorted((project / "data").rglob("*")) if (project / "data").exists() else []
    result = run_session(project, pipelines, cli_params(params), monkeypatch, expect_error=True)
    assert type(result.error).__name__ == error
    for fragment in fragments:
        assert fragment in str(result.error), (fragment, str(result.error))
    assert result.nodes == [] and decoded == []
    after = sorted((project / "data").rglob("*")) if (project / "data").exists() else []
    assert after == versions_before  # nothing written
    tally.add("bad parameters tried", 1)


def test_kedro_run_on_the_command_line_fails_with_the_same_message(project, tally):
    with inside(project):
        result = CliRunner().invoke(kedro_run, ["--pipelines", "train", "--params", "model.backbone=resnet9000"])
    assert result.exit_code != 0
    assert "unknown backbone 'resnet9000'" in str(result.exception)
    tally.add("bad parameters tried", 1)


def test_an_environment_may_only_override_known_keys(project, monkeypatch, decoded):
    env = project / "conf" / "typo_env"
    env.mkdir(exist_ok=True)
    (env / "parameters_data_prep.yml").write_text("data_prep:\n  source:\n    kind: csv\n    cvs: /data/labels.csv\n")
    result = run_session(project, ["data_prep"], None, monkeypatch, expect_error=True, env="typo_env")
    assert "unknown parameter 'data_prep.source.cvs' (did you mean 'data_prep.source.csv'?)" in str(result.error)
    assert result.nodes == [] and decoded == []


def test_kedro_run_on_the_command_line_refuses_a_misspelt_key(project, tally):
    with inside(project):
        result = CliRunner().invoke(kedro_run, ["--params", "data_prep.sorce.kind=folder_tree,data_prep.sorce.root=/x"])
    assert result.exit_code != 0
    assert "unknown parameter 'data_prep.sorce' (did you mean 'data_prep.source'?)" in str(result.exception)
    tally.add("bad parameters tried", 1)


# ----------------------------------------------------------------------------- tables

VALID_ROWS = "".join(f"../images/valid/valid_{i}.png,valid\n" for i in range(4)) + "".join(
    f"../images/invalid/invalid_{i}.png,invalid\n" for i in range(4))

BAD_TABLES = {
    # name: (CSV bytes, fragments the message must contain)
    "missing_column": (b"file,label\nimages/a.png,valid\n",
                       ["has no column ['path']", "its columns are ['file', 'label']"]),
    "unknown_label": (("path,label\n" + VALID_ROWS.replace("invalid_2.png,invalid", "invalid_2.png,maybe")).encode(),
                      ["line 8", "label 'maybe'", "valid/invalid, 1/0, true/false"]),
    "duplicated_path": (("path,label\n" + VALID_ROWS + "../images/valid/valid_1.png,valid\n").encode(),
                        ["more than once (lines 3, 10)", "Keep one row per image"]),
    # 10,001 rows of one image: the message names the first lines and counts the rest, it does not list them all
    "ten_thousand_duplicates": (("path,label\n" + "../images/valid/valid_1.png,valid\n" * 10_001).encode(),
                                ["more than once (lines 2, 3, 4, 5, 6 and 9,996 more)", "1 path(s) are repeated"]),
    "not_utf8": ("path,label\nimages/caf\u00e9.png,valid\n".encode("latin-1"),
                 ["not UTF-8", "byte 21", "save it as UTF-8"]),
    "empty_file": (b"", ["is empty", "header row"]),
}


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_a_broken_csv_stops_data_prep_before_any_image_is_decoded(project, tmp_path, monkeypatch, decoded, tally, name):
    data, fragments = BAD_TABLES[name]
    table = tmp_path / "tables" / "labels.csv"
    table.parent.mkdir()
    table.write_bytes(data)
    # the images the valid rows name sit where ../images resolves from the CSV's folder
    (tmp_path / "images").symlink_to(project.parent / "images")
    params = {"data_prep": {"source": {"kind": "csv", "csv": str(table)}}}
    result = run_session(project, ["data_prep"], params, monkeypatch, expect_error=True)
    assert type(result.error).__name__ == "SourceError"
    for fragment in fragments:
        assert fragment in str(result.error), (fragment, str(result.error))
    assert len(str(result.error)) < 400  # one readable line, whatever the table's size
    assert result.nodes == ["list_image_candidates"] and decoded == []
    tally.add("bad tables tried", 1)


# ----------------------------------------------------------------------------- paths outside the data root


def test_csv_paths_resolve_against_the_csv_folder_and_may_point_outside_it(project, tmp_path, monkeypatch, tally):
    """README: relative paths resolve against the CSV's folder; `..` and absolute paths are
    followed wherever the user can read, and indexed by their resolved absolute path."""
    inside_root = tmp_path / "data_root"
    write_files(inside_root / "images", {
        f"{label}_{i}.png": png_bytes(noise_image(700 + i + 50 * (label == "valid"), (24, 24)))
        for label in ("valid", "invalid") for i in range(3)})
    outside = write_files(tmp_path / "outside", {"valid_far.png": png_bytes(noise_image(801, (24, 24)))})[0]
    absolute = write_files(tmp_path / "elsewhere", {"invalid_abs.png": png_bytes(noise_image(802, (24, 24)))})[0]
    rows = [f"images/{label}_{i}.png,{label}" for label in ("valid", "invalid") for i in range(3)]
    rows += ["../outside/valid_far.png,valid", f"{absolute},invalid"]
    table = inside_root / "labels.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    run_session(project, ["data_prep"], {"data_prep": {"source": {"kind": "csv", "csv": str(table)}}}, monkeypatch)
    index = pd.read_parquet(latest(project / "data/03_primary/image_index.parquet"))
    assert str(outside) in set(index["path"])  # resolved: no '..' left in the indexed path
    assert str(absolute) in set(index["path"])
    assert not any(".." in path for path in index["path"])
    assert len(index) == 8
    tally.add("paths outside the data root tried", 2)


# ----------------------------------------------------------------------------- rows no file system can open

UNOPENABLE_ROWS = {
    # a CSV path: a fragment of the reason it is listed with
    "s3://no-such-bucket-for-tests/a.png": "cannot be read from 's3://'",  # no credentials here
    "gs://no-such-bucket-for-tests/a.png": "cannot read 'gs://' URLs",  # gcsfs is not installed
    "foo://server/a.png": "unknown URL scheme 'foo://'",
    "images/with\0nul.png": "NUL byte",
    "http://127.0.0.1:9/refused.png": "cannot be reached",  # nothing listens on the discard port
}


def test_csv_rows_that_no_file_system_can_open_are_listed_with_their_reason_and_the_rest_indexed(
        project, tmp_path, monkeypatch, tally):
    """An unknown URL scheme, a scheme whose package or credentials are missing, a NUL byte or a
    refused connection in one row: data_prep indexes every other row and lists that one."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no metadata service to wait for
    good = sorted(str(p) for p in (project.parent / "images").rglob("*.png"))
    rows = [f"{path},{'valid' if '/valid/' in path else 'invalid'}" for path in good]
    rows += [f"{path},valid" for path in UNOPENABLE_ROWS]
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    params = {"data_prep": {"source": {"kind": "csv", "csv": str(table)},
                            "image_checks": {"read_timeout_s": 10}}}
    run_session(project, ["data_prep"], params, monkeypatch)
    index = pd.read_parquet(latest(project / "data/03_primary/image_index.parquet"))
    rejected = pd.read_parquet(latest(project / "data/08_reporting/rejected_images.parquet"))
    assert sorted(index["path"]) == good
    reasons = dict(zip(rejected["path"], rejected["reason"]))
    for path, fragment in UNOPENABLE_ROWS.items():
        listed = reasons.get(path) or reasons.get(str(tmp_path / path))  # relative rows resolve to the CSV's folder
        assert listed is not None and fragment in listed, (path, listed)
    tally.add("unopenable CSV rows tried", len(UNOPENABLE_ROWS))
    fsspec.get_filesystem_class("s3").clear_instance_cache()  # made without credentials: not for later tests
