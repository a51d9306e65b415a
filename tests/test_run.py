"""End to end: a KedroSession run of the project as a user starts it, on the built-in demo."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from .conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project's configuration in a scratch folder, so runs write nothing here."""
    for item in ("conf", "pyproject.toml", ".telemetry"):
        source = REPO_ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / item)
    (tmp_path / "src").mkdir()  # Kedro wants the folder; the package itself is installed
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    return tmp_path


def latest(path: Path) -> Path:
    """The newest version of a versioned dataset."""
    return sorted(path.iterdir())[-1] / path.name


@pytest.mark.slow
def test_data_prep_session_on_the_demo(project, caplog):
    with caplog.at_level(logging.INFO, logger="image_classification.hooks"):
        with KedroSession.create(project_path=project) as session:
            session.run(pipeline_names=["data_prep"])
    # the run ends by saying where its time went, every node of the pipeline named once
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Time per node"))
    timed = re.findall(r"(\w+) (\d+\.\d) s(?:,|$)", summary.split(": ", 1)[1])
    assert sorted(name for name, _ in timed) == sorted(node.name for node in pipelines["data_prep"].nodes)
    assert [float(s) for _, s in timed] == sorted((float(s) for _, s in timed), reverse=True)
    io = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Loading and saving datasets"))
    assert "image_index " in io
    index = pd.read_parquet(latest(project / "data/03_primary/image_index.parquet"))
    summary = json.loads(latest(project / "data/08_reporting/split_summary.json").read_text())
    assert summary["per_split"] == {
        "train": {"valid": 70, "invalid": 70},
        "val": {"valid": 20, "invalid": 20},
        "test": {"valid": 10, "invalid": 10},
    }
    assert set(summary["unseen_kinds"]) >= {"texture", "digit"}
    assert summary["rejected"] == 0
    assert index["path"].map(lambda p: Path(p).is_file()).all()
    # the demo is built once and reused: a second run leaves the files untouched
    marker = project / "data/01_raw/demo/.demo_version"
    built = marker.stat().st_mtime_ns
    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["data_prep"])
    assert marker.stat().st_mtime_ns == built
