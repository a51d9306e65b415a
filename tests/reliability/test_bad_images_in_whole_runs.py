"""Every kind of bad image file among good ones, through whole Kedro runs of each pipeline that
reads images: data_prep, train, zero_shot and predict. Each run must finish, list every bad file
with its reason, and process every good image.

One scratch project is built and run once for the module (the runs take most of this suite's
time); the tests below read what the runs wrote and logged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io.core import Version
from kedro_datasets.json import JSONDataset

from image_classification.datasets import SafetensorsDataset
from image_classification.image_files import CHANGED_SINCE_INDEXED

from ..conftest import BAD_FILES, good_files, noise_image, png_bytes, write_files
from .conftest import FAST_SETTINGS, latest, make_project, run_session
from .special_files import MAX_FILE_BYTES, SPECIAL_REASONS, write_special_files

# names that are not valid UTF-8 (byte 0xE9, Latin-1's e-acute): listed with their bytes escaped, never fatal
UNNAMEABLE = {os.fsdecode(b"caf\xe9.png"): "not valid UTF-8", os.fsdecode(b"notes_\xe9.txt"): "not valid UTF-8"}
# CSV rows no file system can open (see test_bad_tables_and_parameters): listed by predict with their reason
UNOPENABLE_ROWS = {"foo://server/a.png": "unknown URL scheme 'foo://'", "/images/with\0nul.png": "NUL byte",
                   "gs://no-such-bucket-for-tests/a.png": "cannot read 'gs://' URLs"}


def shown(path: Path | str) -> str:
    """A path as tables and logs hold it: a name that is not valid UTF-8 with its bytes escaped."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

# the reason every bad file must be listed with (a fragment of it)
EXPECTED_REASON = {
    "zero_bytes.jpg": "empty file",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "random_bytes.png": "not an image",
    "page.jpg": "not an image",  # an HTML error page saved under an image name
    "tiny.png": "too small: 1x1",
    "sliver.png": "too small: 400x4",
    "bomb.png": "decompression bomb",
    "loop.jpg": "symbolic links",
    "dangling.jpg": "missing file",
    "notes.txt": "not an image file type",
    **SPECIAL_REASONS,  # pipes, sockets, devices, oversized and lying files: refused before any read
    **UNNAMEABLE,
}
SECONDS_OVER_A_NORMAL_RUN = 60  # the most a run with bad files may take beyond the same run without them


# predict scores any image it can decode, however small: only data_prep holds a minimum size
SCORED_BY_PREDICT = {"tiny.png", "sliver.png"}


def extreme_aspect_ratios() -> dict[str, bytes]:
    """Good images of extreme shapes: their short side is just allowed (16 px)."""
    return {"wide_2000x16.png": png_bytes(noise_image(60, size=(2000, 16))),
            "tall_16x1200.png": png_bytes(noise_image(61, size=(16, 1200)))}


def write_bad_files(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Bad files of every kind in ``folder`` (or those named): corrupt ones, a symlink loop,
    a link whose file is gone, a text file, and (all kinds only) pipes, sockets, devices, huge files
    and files whose names are not valid UTF-8."""
    special = write_special_files(folder) if names is None else {}
    if names is None:
        special |= dict(zip(UNNAMEABLE, write_files(folder, {name: png_bytes(noise_image(7, (24, 24)))
                                                             for name in UNNAMEABLE})))
    names = names or [name for name in EXPECTED_REASON if name not in SPECIAL_REASONS and name not in UNNAMEABLE]
    folder.mkdir(parents=True, exist_ok=True)
    write_files(folder, {name: make() for name, make in BAD_FILES.items() if name in names})
    if "loop.jpg" in names:
        os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    if "dangling.jpg" in names:
        os.symlink(folder / "deleted_long_ago.jpg", folder / "dangling.jpg")
    if "notes.txt" in names:
        (folder / "notes.txt").write_text("not an image")
    return {**{name: folder / name for name in names}, **special}


def write_good_images(folder: Path, label: str, count: int, first_seed: int) -> list[Path]:
    """Distinct noise pictures; valid ones light, invalid ones dark, so one epoch learns something."""
    shift = 128 if label == "valid" else 0
    return write_files(folder, {
        f"{label}_{index:02d}.png": png_bytes(noise_image(first_seed + index, (32, 32)).point(lambda v: v // 2 + shift))
        for index in range(count)
    })


class WholeRun:
    """The scratch project, its source tree and what each run left behind."""

    def __init__(self, root: Path) -> None:
        self.images, self.unseen, self.incoming = root / "images", root / "unseen", root / "incoming"
        self.good = [*write_good_images(self.images / "valid", "valid", 6, 100),
                     *write_good_images(self.images / "invalid", "invalid", 6, 200),
                     *write_files(self.images / "valid" / "every_mode", good_files()),
                     *write_files(self.images / "invalid" / "odd_shapes", extreme_aspect_ratios()),
                     *write_good_images(self.unseen / "digit", "digit", 3, 300),
                     *write_good_images(self.unseen / "texture", "texture", 3, 400)]
        unseen_bad = write_bad_files(self.unseen / "digit" / "bad", ["zero_bytes.jpg", "page.jpg", "truncated.jpg"])
        self.bad = {**write_bad_files(self.images / "invalid" / "bad"),
                    **{f"unseen/{name}": path for name, path in unseen_bad.items()}}
        self.predict_good = write_files(self.incoming, good_files() | extreme_aspect_ratios())
        self.predict_bad = write_bad_files(self.incoming / "broken")
        self.project = make_project(root / "project", FAST_SETTINGS | {
            "data_prep": {"source": {"kind": "folder_tree", "root": str(self.images),
                                     "zero_shot_root": str(self.unseen)},
                          "image_checks": {"max_file_bytes": MAX_FILE_BYTES, "read_timeout_s": 5}},
            "predict": {**FAST_SETTINGS["predict"], "source": {"kind": "folder_tree", "root": str(self.incoming)},
                        "max_file_bytes": MAX_FILE_BYTES, "read_timeout_s": 5},
        })
        # the same good images alone: what a normal run on them takes
        self.good_only = root / "good_only"
        for folder in (self.images, self.unseen):
            shutil.copytree(folder, self.good_only / folder.name, symlinks=True,
                            ignore=lambda _, names: [n for n in names if n in ("bad", "broken")])
        self.predict_good_only = write_files(root / "incoming_good", good_files() | extreme_aspect_ratios())
        self.baseline = make_project(root / "baseline", FAST_SETTINGS | {
            "data_prep": {"source": {"kind": "folder_tree", "root": str(self.good_only / "images"),
                                     "zero_shot_root": str(self.good_only / "unseen")}}})
        self.deleted: list[Path] = []
        self.changed: list[Path] = []
        self.runs: dict = {}
        self.seconds: dict[str, float] = {}
        self.csv_predictions: pd.DataFrame | None = None

    def timed(self, what: str, project: Path, pipelines: list[str], params: dict | None = None):
        started = time.perf_counter()
        record = run_session(project, pipelines, params)
        self.seconds[what] = time.perf_counter() - started
        return record

    def output(self, relative: str) -> Path:
        return latest(self.project / "data" / relative)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> WholeRun:
    run = WholeRun(tmp_path_factory.mktemp("whole_run"))
    run.timed("data_prep, good images only", run.baseline, ["data_prep"])
    run.runs["data_prep"] = run.timed("data_prep, with bad files", run.project, ["data_prep"])
    index = pd.read_parquet(run.output("03_primary/image_index.parquet"))
    # files deleted between indexing and training: a labelled one and an unseen-kind one
    for split in ("test", "unseen"):
        path = index.loc[index["split"] == split, "path"].iloc[0]
        Path(path).unlink()
        run.deleted.append(Path(path))
    # files changed between indexing and training: one truncated, one replaced by another picture
    truncated, replaced = (Path(p) for p in index.loc[index["split"] == "train", "path"].iloc[:2])
    truncated.write_bytes(truncated.read_bytes()[:100])
    replaced.write_bytes(png_bytes(noise_image(999, (32, 32))))
    run.changed += [truncated, replaced]
    run.runs["train"] = run_session(run.project, ["train"])
    run.runs["score"] = run_session(run.project, ["score"])
    # evaluate's threshold, written as evaluate would (evaluate itself is left out to save time)
    JSONDataset(filepath=str(run.project / "data/07_model_output/operating_point.json"),
                version=Version(None, None)).save({"threshold": 0.5})
    run.runs["zero_shot"] = run_session(run.project, ["embedding_analysis", "zero_shot"])
    # the good images alone, then every file listed in a CSV, then the folder with every kind of bad file
    good_source = {"kind": "folder_tree", "root": str(run.predict_good_only[0].parent)}
    run.timed("predict, good images only", run.project, ["predict"], {"predict": {"source": good_source}})
    listing = run.project / "listing.csv"
    listed = [str(p) for p in [*run.predict_good, *run.predict_bad.values()] if shown(p) == str(p)]
    pd.DataFrame({"path": listed + list(UNOPENABLE_ROWS)}).to_csv(listing, index=False)
    run.timed("predict, CSV listing bad files", run.project, ["predict"],
              {"predict": {"source": {"kind": "csv", "csv": str(listing)}}})
    run.csv_predictions = pd.read_parquet(run.output("07_model_output/predictions.parquet"))
    run.runs["predict"] = run.timed("predict, folder with bad files", run.project, ["predict"])
    return run


def test_data_prep_lists_every_bad_file_with_its_reason_and_indexes_every_good_one(whole_run, tally):
    rejected = pd.read_parquet(whole_run.output("08_reporting/rejected_images.parquet"))
    index = pd.read_parquet(whole_run.output("03_primary/image_index.parquet"))
    reasons = dict(zip(rejected["path"], rejected["reason"]))
    for name, path in whole_run.bad.items():
        assert shown(path) in reasons, f"{name} is not in rejected_images"
        assert EXPECTED_REASON[name.removeprefix("unseen/")] in reasons[shown(path)], (name, reasons[shown(path)])
    assert len(rejected) == len(whole_run.bad)
    lost = sorted({str(p) for p in whole_run.good} - set(index["path"]))
    tally.lost.extend(lost)
    assert not lost
    assert len(index) == len(whole_run.good)
    assert set(index.loc[index["split"] == "unseen", "kind"]) == {"digit", "texture"}
    # the EXIF-rotated photo is indexed upright (60x30 turned a quarter)
    rotated = index[index["path"].str.endswith("exif_rotated.jpg")].iloc[0]
    assert (rotated["width"], rotated["height"]) == (30, 60)
    summary = json.loads(whole_run.output("08_reporting/split_summary.json").read_text())
    assert summary["rejected"] == len(whole_run.bad) and summary["images"] == len(whole_run.good)
    tally.add("bad image files tried (data_prep)", len(whole_run.bad))
    tally.add("good images of every mode and shape checked (data_prep)", len(whole_run.good))


def test_train_skips_files_deleted_after_indexing_and_trains_on_the_rest(whole_run, tally):
    cache = whole_run.project / "data/04_feature/backbone_features.safetensors"
    features = SafetensorsDataset(filepath=str(cache)).load()
    errors = dict(zip(features["metadata"]["paths"], features["metadata"]["errors"]))
    deleted, changed = {str(p) for p in whole_run.deleted}, {str(p) for p in whole_run.changed}
    assert {path for path, error in errors.items() if error} == deleted | changed
    assert all("missing file" in errors[path] for path in deleted)
    assert all(errors[path] == CHANGED_SINCE_INDEXED for path in changed)
    assert "rerun data_prep" in CHANGED_SINCE_INDEXED
    for path in changed:  # named once, with the stage to rerun
        assert sum(path in line for line in whole_run.runs["train"].warnings) == 1
    assert any("2 images changed since data_prep" in line and "rerun data_prep" in line
               for line in whole_run.runs["train"].warnings)
    assert features["tensors"]["pooled"].float().abs().sum() > 0  # real features, not zeros
    for path in deleted:  # the log names each skipped file and why
        assert any(path in line and "missing file" in line for line in whole_run.runs["train"].warnings)
    history = pd.read_parquet(whole_run.output("08_reporting/training_history.parquet"))
    assert len(history) == 1 and np.isfinite(history["train_loss"]).all()
    assert whole_run.output("06_models/model.safetensors").stat().st_size > 0
    tally.add("files deleted between indexing and training", len(deleted))
    tally.add("files truncated or replaced between indexing and training", len(changed))


def test_zero_shot_scores_every_readable_image_and_names_the_deleted_ones(whole_run):
    run = whole_run.runs["zero_shot"]
    assert {"score_anomalies", "decide_images", "plot_detector_comparison"} <= set(run.nodes)
    index = pd.read_parquet(whole_run.output("03_primary/image_index.parquet"))
    decisions = pd.read_parquet(whole_run.output("07_model_output/zero_shot_decisions.parquet"))
    deleted = {str(p) for p in whole_run.deleted}
    expected = set(index.loc[index["split"].isin(["test", "unseen"]), "path"]) - deleted
    assert set(decisions["path"]) == expected
    assert decisions["score"].notna().all() and decisions["anomaly_score"].notna().all()
    for path in deleted:
        assert any(path in line and "missing file" in line for line in run.warnings)


def test_predict_gives_every_file_one_row_scores_every_good_image_and_says_why_not_the_rest(whole_run, tally):
    predictions = pd.read_parquet(whole_run.output("07_model_output/predictions.parquet"))
    rows = predictions.set_index("path")
    for path in whole_run.predict_good:
        assert rows.loc[str(path), "error"] == "", (path.name, rows.loc[str(path), "error"])
        assert np.isfinite(rows.loc[str(path), "score"])
    for name, path in whole_run.predict_bad.items():
        if name in SCORED_BY_PREDICT:
            assert rows.loc[str(path), "error"] == "" and np.isfinite(rows.loc[str(path), "score"]), name
            continue
        assert EXPECTED_REASON[name] in rows.loc[shown(path), "error"], (name, rows.loc[shown(path), "error"])
        assert np.isnan(rows.loc[shown(path), "score"])
    assert len(predictions) == len(whole_run.predict_good) + len(whole_run.predict_bad)
    summary = json.loads(whole_run.output("08_reporting/prediction_summary.json").read_text())
    assert summary["scored"] == len(whole_run.predict_good) + len(SCORED_BY_PREDICT)
    csv = pd.read_csv(whole_run.output("07_model_output/predictions.csv"), keep_default_na=False)
    assert len(csv) == len(predictions)
    # the same files listed in a CSV: the same reasons, each file once
    listed = whole_run.csv_predictions.set_index("path")
    # a CSV cannot hold a name that is not UTF-8: those are left out of it, and rows it can hold added
    assert listed.index.is_unique and len(listed) == len(predictions) - len(UNNAMEABLE) + len(UNOPENABLE_ROWS)
    for path, reason in UNOPENABLE_ROWS.items():
        assert reason in listed.loc[path, "error"] and np.isnan(listed.loc[path, "score"]), (path, listed.loc[path])
    for name, path in whole_run.predict_bad.items():
        if name not in SCORED_BY_PREDICT | set(UNNAMEABLE):  # a text file named in a CSV is opened like any listed file
            expected = "not an image" if name == "notes.txt" else EXPECTED_REASON[name]
            assert expected in listed.loc[str(path), "error"], (name, listed.loc[str(path), "error"])
    assert (listed.loc[[str(p) for p in whole_run.predict_good], "error"] == "").all()
    tally.add("bad image files tried (predict)", len(whole_run.predict_bad))
    tally.add("good images checked (predict)", len(whole_run.predict_good))


def test_runs_with_bad_files_end_within_a_minute_of_runs_on_the_good_images_alone(whole_run, tally):
    seconds = whole_run.seconds
    for stage in ("data_prep", "predict"):
        normal = seconds[f"{stage}, good images only"]
        for case in [name for name in seconds if name.startswith(stage) and "good images only" not in name]:
            tally.add(f"seconds over a normal {stage} run: {case} ({seconds[case]:.1f} s vs {normal:.1f} s)")
            assert seconds[case] - normal < SECONDS_OVER_A_NORMAL_RUN, (case, seconds[case], normal)


def test_a_pickle_planted_as_the_newest_checkpoint_is_refused_and_its_code_never_runs(whole_run, monkeypatch,
                                                                                        tmp_path, tally):
    marker = tmp_path / "pwned"
    payload = _pickle_that_touches(marker)
    planted = whole_run.project / "data/06_models/model.safetensors/9999-12-31T23.59.59.999Z/model.safetensors"
    planted.parent.mkdir()
    planted.write_bytes(payload)
    try:
        run = run_session(whole_run.project, ["predict"], monkeypatch=monkeypatch, expect_error=True)
    finally:
        planted.unlink()
        planted.parent.rmdir()
    assert re.search(r"not a safetensors checkpoint \(it looks like a pickle\).*will not be unpickled", str(run.error),
                     re.S), run.error
    assert not marker.exists()
    assert "predict_images" not in run.nodes
    tally.add("hostile files tried", 1)


def _pickle_that_touches(marker: Path) -> bytes:
    """Pickle bytes that, if unpickled, would run ``open(marker, 'w')``."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Payload(), protocol=2)
