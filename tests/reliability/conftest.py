"""Shared by the reliability tests: scratch Kedro projects, session runs that record which nodes ran
and what was logged, and a tally of every bad input, fault and fuzz iteration tried, printed at the
end of the test session with what was lost (the goal: nothing)."""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.pipeline.node import Node

from ..conftest import REPO_ROOT


@dataclass
class Tally:
    """What the reliability tests tried, and what they lost."""

    counts: Counter = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)

    def add(self, what: str, count: int = 1) -> None:
        self.counts[what] += count


TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs set PyTorch's thread count (runtime.threads, the train driver); later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter) -> None:
    if not TALLY.counts:
        return
    terminalreporter.section("reliability")
    for what, count in sorted(TALLY.counts.items()):
        terminalreporter.write_line(f"{what}: {count}")
    terminalreporter.write_line(f"good images lost: {len(TALLY.lost)}" + (f" {TALLY.lost}" if TALLY.lost else ""))


def make_project(root: Path, parameters: dict | None = None) -> Path:
    """A scratch copy of the project's base configuration, plus ``parameters`` as local ones.

    Only ``conf/base`` is copied: whatever a developer keeps in ``conf/local`` stays out.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "conf" / "base", root / "conf" / "base")
    (root / "conf" / "local").mkdir()
    for item in ("pyproject.toml", ".telemetry"):
        if (REPO_ROOT / item).exists():
            shutil.copy(REPO_ROOT / item, root / item)
    (root / "src").mkdir()  # Kedro wants the folder; the package itself is installed
    if parameters:
        (root / "conf" / "local" / "parameters_reliability.yml").write_text(yaml.safe_dump(parameters))
    return root


FAST_SETTINGS = {
    # one thread: faster than two spin-waiting on CPUs shared with other work, and the same floats
    "runtime": {"device": "cpu", "threads": 1, "batch_size": 32, "workers": 0},
    "model": {"backbone": "efficientnet_lite0", "weights": "imagenet", "weights_path": None},
    "train": {"epochs": 1, "save_state_every_s": 3600, "workers": 0},
    "zero_shot": {"detectors": ["knn", "msp"], "feature_spaces": ["pooled"], "flag_detector": "knn_pooled",
                  "knn_k": 2},
    "predict": {"workers": 0, "parity_images": 2},
}
"""Settings that keep a whole run small: ImageNet weights (random ones give all-zero features on
tiny images), one thread, one epoch, two detectors."""


@dataclass
class RunRecord:
    nodes: list[str]
    warnings: list[str]
    error: BaseException | None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def inside(project: Path) -> Iterator[Path]:
    """Work from ``project`` as ``kedro run`` would, and come back afterwards."""
    before = Path.cwd()
    os.chdir(project)
    try:
        bootstrap_project(project)
        yield project
    finally:
        os.chdir(before)


def run_session(project: Path, pipelines: list[str] | None = None, params: dict | None = None,
                monkeypatch: pytest.MonkeyPatch | None = None, expect_error: bool = False,
                env: str | None = None) -> RunRecord:
    """Run a KedroSession on ``project`` as ``kedro run --pipelines ... --params ... --env ...`` does.

    Returns the nodes that started, the package's warnings and the error the run stopped with.
    """
    started: list[str] = []
    original_run = Node.run

    def recording_run(self, inputs=None):
        started.append(self.name)
        return original_run(self, inputs)

    patcher = monkeypatch or pytest.MonkeyPatch()
    patcher.setattr(Node, "run", recording_run)
    collect, package_logger = _Collect(), logging.getLogger("image_classification")
    error = None
    try:
        with inside(project):
            package_logger.addHandler(collect)
            with KedroSession.create(project_path=project, runtime_params=params or {}, env=env) as session:
                session.run(pipeline_names=pipelines)
    except Exception as exc:  # noqa: BLE001 - returned for the test to judge
        if not expect_error:
            raise
        error = exc
    finally:
        package_logger.removeHandler(collect)
        if monkeypatch is None:
            patcher.undo()
        else:
            monkeypatch.setattr(Node, "run", original_run)
    if expect_error and error is None:
        pytest.fail(f"the run of {pipelines} with {params} finished; it should have stopped")
    return RunRecord(started, collect.messages, error)


def latest(path: Path) -> Path:
    """The newest version of a versioned dataset."""
    return sorted(p for p in path.iterdir() if (p / path.name).exists())[-1] / path.name
