"""`kedro prune` keeps the newest versions of every versioned dataset of one environment and removes
the rest; it touches nothing else (unversioned state, other environments, folders not named like
versions)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image_classification.prune import prune

from .conftest import REPO_ROOT

STAMPS = [f"2026-12-0{day}T10.00.00.000Z" for day in range(1, 6)]  # oldest first


def versions(folder: Path, stamps: list[str], name: str, size: int = 1000) -> None:
    for stamp in stamps:
        (folder / stamp).mkdir(parents=True)
        (folder / stamp / name).write_bytes(b"x" * size)


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / item, tmp_path / item)
    (tmp_path / "src").mkdir()
    data = tmp_path / "data"
    versions(data / "06_models/model.safetensors", STAMPS, "model.safetensors")
    versions(data / "08_reporting/roc_curve.png", STAMPS[:2], "roc_curve.png")  # a figure factory's dataset
    (data / "06_models/model.safetensors/notes").mkdir()  # not a version: left alone
    (data / "04_feature").mkdir(parents=True)
    (data / "04_feature/backbone_features.safetensors").write_bytes(b"cache")  # unversioned state
    versions(data / "envs/cifar10_dev/06_models/model.safetensors", STAMPS, "model.safetensors", size=300_000)
    return tmp_path


def remaining(folder: Path) -> list[str]:
    return sorted(child.name for child in folder.iterdir())


def test_prune_keeps_the_newest_versions_of_each_dataset_and_nothing_else_changes(project):
    from kedro.config import OmegaConfigLoader

    from image_classification.settings import CONFIG_LOADER_ARGS

    catalog = OmegaConfigLoader(conf_source=str(project / "conf"), **CONFIG_LOADER_ARGS)["catalog"]
    planned = prune(catalog, project, keep=2, dry_run=True)
    assert remaining(project / "data/06_models/model.safetensors") == [*STAMPS, "notes"]  # a dry run removes nothing
    by_dataset = {result.dataset.name: result for result in planned}
    assert by_dataset["model.safetensors"].removed == STAMPS[:3] and by_dataset["model.safetensors"].bytes_removed == 3000
    prune(catalog, project, keep=2)
    assert remaining(project / "data/06_models/model.safetensors") == [*STAMPS[3:], "notes"]
    assert remaining(project / "data/08_reporting/roc_curve.png") == STAMPS[:2]
    assert (project / "data/04_feature/backbone_features.safetensors").read_bytes() == b"cache"
    assert remaining(project / "data/envs/cifar10_dev/06_models/model.safetensors") == STAMPS  # another environment


def test_kedro_prune_on_the_command_line_prunes_one_environment(project):
    environment = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "kedro", "prune", "--keep", "1", "--env", "cifar10_dev"],
                            cwd=project, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "data/envs/cifar10_dev/06_models/model.safetensors: removed 4, kept 1" in result.stdout
    assert "Freed 1.2 MB in 1 of 1 versioned datasets" in result.stdout  # four versions of 300 kB
    assert remaining(project / "data/envs/cifar10_dev/06_models/model.safetensors") == STAMPS[-1:]
    assert remaining(project / "data/06_models/model.safetensors") == [*STAMPS, "notes"]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        prune({}, project, keep=0)
