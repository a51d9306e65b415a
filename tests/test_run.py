"""End to end: a KedroSession run of the project as a user starts it, on the built-in demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
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
def test_data_prep_session_on_the_demo(project):
    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["data_prep"])
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
