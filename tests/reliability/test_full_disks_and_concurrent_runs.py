"""Outputs that cannot be written and projects shared by two runs: a save that fails for a full disk or a
read-only folder ends ``kedro run`` with one ``Error:`` line naming the path and loses no earlier version;
two runs that would write the unversioned feature cache and training state do not run at once.

How a full disk is made without filling one: a real ``kedro run`` in a child process under RLIMIT_FSIZE
(SIGXFSZ ignored, so write() fails with EFBIG as it fails with ENOSPC on a full disk: partway through a
file). A read-only folder: the tests run as root, which chmod does not stop, so the data folder is bind-
mounted read-only in a private mount namespace of the child (``unshare``; EROFS as on a read-only disk);
where the system allows no namespace, that test is skipped and the file-size limit covers the case.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io.core import Version

from image_classification.datasets import SafetensorsDataset
from image_classification.hooks import LOCK_FILE

from ..conftest import REPO_ROOT, noise_image, png_bytes, write_files
from .conftest import FAST_SETTINGS, make_project, run_session

pytestmark = pytest.mark.slow
CHILD_TIMEOUT = 600
# a child kedro runs this checkout's code, wherever it starts (a relative PYTHONPATH would not follow it)
CHILD_ENVIRONMENT = {**os.environ, "COLUMNS": "200", "PYTHONDONTWRITEBYTECODE": "1",  # a capped .pyc would break imports
                     "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def files_under(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the sha256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def kedro_run(project: Path, pipelines: str, file_size_limit: int | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``kedro run --pipelines ...`` in a child process, optionally under a file-size limit."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([*prefix, sys.executable, "-m", "kedro", "run", "--pipelines", pipelines], cwd=project,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL, check=False,
                          env=CHILD_ENVIRONMENT, preexec_fn=limit_file_size if file_size_limit else None)


def error_lines(child: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (child.stdout + child.stderr).splitlines() if line.startswith("Error:")]


def assert_nothing_lost_nothing_partial(data: Path, before: dict[str, str], error_line: str) -> None:
    """Every earlier file is still there, unchanged; the output the error names got no new version; any
    output saved before the failure is complete (it loads)."""
    after = files_under(data)
    assert {name: after.get(name) for name in before} == before
    for name in set(after) - set(before):
        dataset = name.split("/")[1]
        assert dataset not in error_line, f"{name}: a version of the output that failed to save"
        if name.endswith(".parquet"):
            pd.read_parquet(data / name)
        else:
            json.loads((data / name).read_text())


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A project whose data_prep has run once: the earlier versions a failed run must not lose."""
    images = tmp_path / "images"
    for label, shift in (("valid", 128), ("invalid", 0)):
        write_files(images / label, {f"{label}_{i}.png": png_bytes(noise_image(i + shift, (32, 32)))
                                     for i in range(6)})
    project = make_project(tmp_path / "project", {**FAST_SETTINGS, "data_prep": {
        "source": {"kind": "folder_tree", "root": str(images)}}})
    run_session(project, ["data_prep"])
    return project


def test_data_prep_on_a_full_disk_ends_with_one_error_line_and_keeps_every_earlier_version(prepared, tally):
    before = files_under(prepared / "data")
    smallest = min(path.stat().st_size for path in (prepared / "data").rglob("*.parquet"))
    started = time.perf_counter()
    child = kedro_run(prepared, "data_prep", file_size_limit=smallest // 2)
    failed_seconds = time.perf_counter() - started
    assert child.returncode == 1, child.stderr[-3000:]
    lines = error_lines(child)
    assert len(lines) == 1, child.stderr[-3000:]
    assert "cannot save" in lines[0] and str(prepared / "data") in lines[0] and "previous one still loads" in lines[0]
    assert "Traceback" not in child.stderr
    assert_nothing_lost_nothing_partial(prepared / "data", before, lines[0])
    started = time.perf_counter()
    assert kedro_run(prepared, "data_prep").returncode == 0  # and the next run, with room, works
    normal_seconds = time.perf_counter() - started
    assert failed_seconds - normal_seconds < 60
    tally.add("saves failed for a full disk (file-size limit), versions lost: 0")
    tally.add(f"seconds, kedro run data_prep on a full disk vs a normal one: {failed_seconds:.1f} vs {normal_seconds:.1f}")


def test_data_prep_into_a_read_only_folder_ends_with_one_error_line_and_keeps_every_earlier_version(prepared, tally):
    data = str(prepared / "data")
    namespace = ("unshare", "--mount", "--map-root-user", "sh", "-c",
                 f'mount --bind "{data}" "{data}" && mount -o remount,bind,ro "{data}" && exec "$0" "$@"')
    if shutil.which("unshare") is None or subprocess.run([*namespace[:3], "true"], capture_output=True,
                                                         check=False).returncode != 0:
        pytest.skip("no private mount namespace here; the file-size limit test covers a failed save")
    before = files_under(prepared / "data")
    child = kedro_run(prepared, "data_prep", prefix=namespace)
    assert child.returncode == 1, child.stderr[-3000:]
    lines = error_lines(child)
    assert len(lines) == 1 and "Read-only file system" in lines[0] and data in lines[0], child.stderr[-3000:]
    assert_nothing_lost_nothing_partial(prepared / "data", before, lines[0])
    tally.add("saves failed for a read-only folder, versions lost: 0")


_SAVE_OVER_THE_LIMIT = """
import resource, signal, sys, torch
from kedro.io.core import Version
from image_classification.datasets import SafetensorsDataset
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
payload = {"tensors": {"w": torch.ones(1_000_000)}, "metadata": {"value": 2}}
version = Version(None, "2") if sys.argv[2] == "versioned" else None
try:
    SafetensorsDataset(filepath=sys.argv[1], version=version).save(payload)
except Exception as error:
    print("failed:", type(error).__name__, error)
"""


def test_a_checkpoint_save_over_the_file_size_limit_keeps_the_previous_version_loadable(tmp_path):
    versioned, state = tmp_path / "model.safetensors", tmp_path / "state.safetensors"
    first = {"tensors": {"w": torch.zeros(10)}, "metadata": {"value": 1}}
    SafetensorsDataset(filepath=str(versioned), version=Version(None, "1")).save(first)
    SafetensorsDataset(filepath=str(state)).save(first)
    for path, kind in ((versioned, "versioned"), (state, "plain")):
        child = subprocess.run([sys.executable, "-c", _SAVE_OVER_THE_LIMIT, str(path), kind], capture_output=True,
                               text=True, timeout=CHILD_TIMEOUT, env=CHILD_ENVIRONMENT, check=False)
        assert "failed: DatasetError" in child.stdout and "File too large" in child.stdout, child.stderr[-2000:]
    for loaded in (SafetensorsDataset(filepath=str(versioned), version=Version(None, None)).load(),
                   SafetensorsDataset(filepath=str(state)).load()):
        assert loaded["metadata"] == {"value": 1}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left behind


def test_training_on_a_disk_too_full_for_its_resume_state_warns_and_still_saves_the_model(prepared, tally):
    """The resume state (the head, its best weights and Adam's two slots) is several times the model's
    size: with room for the model but not for the state, training ends (rc 0), says it kept no resume
    point, and the model loads."""
    limit = 80_000_000  # over the model (~41 MB with the efficientnet_lite0 backbone), under the state (~111 MB)
    child = kedro_run(prepared, "train", file_size_limit=limit)
    output = child.stdout + child.stderr
    assert child.returncode == 0, output[-3000:]
    assert "The training state cannot be saved (File too large)" in " ".join(output.split()), output[-3000:]
    assert not error_lines(child)
    model = sorted((prepared / "data/06_models/model.safetensors").glob("*/model.safetensors"))[-1]
    assert model.stat().st_size < limit
    assert SafetensorsDataset(filepath=str(model)).load()["tensors"]
    assert not (prepared / "data/06_models/training_state.safetensors").exists()
    tally.add("full disks tried (training state)", 1)


def test_a_second_training_run_on_one_project_stops_at_once_with_a_message_naming_the_first(prepared, tally):
    """The second run stops (it does not wait: a training run can take hours) and says which run holds
    the lock; a run that writes only versioned outputs (data_prep) goes ahead meanwhile, under its own
    version; once the first run ends, training runs again."""
    first = subprocess.Popen([sys.executable, "-m", "kedro", "run", "--pipelines", "train"], cwd=prepared,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                             env=CHILD_ENVIRONMENT)
    owner, deadline = prepared / LOCK_FILE.replace(".lock", ".owner"), time.monotonic() + CHILD_TIMEOUT
    while not (owner.exists() and str(first.pid) in owner.read_text()):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the first training run never took the lock"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # held mid-run, lock and all, however fast training is here
    try:
        started = time.perf_counter()
        second = run_session(prepared, ["train"], expect_error=True)
        assert time.perf_counter() - started < 60
        message = str(second.error)
        assert f"process {first.pid}, pipelines train" in message and "Wait for that run to finish" in message
        assert second.nodes == []  # stopped before any node: nothing of the first run's state touched
        index_versions = len(list((prepared / "data/03_primary/image_index.parquet").iterdir()))
        run_session(prepared, ["data_prep"])  # versioned outputs only: no lock needed
        assert len(list((prepared / "data/03_primary/image_index.parquet").iterdir())) == index_versions + 1
    finally:
        first.send_signal(signal.SIGCONT)
        output, _ = first.communicate(timeout=CHILD_TIMEOUT)
    assert first.returncode == 0, output[-3000:]
    run_session(prepared, ["train"])  # the lock went with the first run
    tally.add("concurrent training runs stopped with a message", 1)


_OPEN_THE_STORE = """
import sys, time
from pathlib import Path
from kedro.framework.project import settings
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project, start = Path(sys.argv[1]), Path(sys.argv[2])
bootstrap_project(project)
while not start.exists():  # both children past their imports, then into the store at once
    time.sleep(0.001)
with KedroSession.create(project_path=project) as session:
    session.load_context()
print("tracking:", next(hook for hook in settings.HOOKS if hasattr(hook, "_tracking"))._tracking)
"""


def test_two_runs_started_together_on_a_new_project_both_track_into_its_store(tmp_path, tally):
    """Both open (and one creates) the project's SQLite store at the same moment: before the store was
    created under a lock, one of them lost the race on the schema ("table experiments already exists",
    "duplicate column name") and ran with tracking off."""
    environment = {key: value for key, value in CHILD_ENVIRONMENT.items() if key != "IMAGE_CLASSIFICATION_MLFLOW"}
    for attempt in range(3):  # a fresh project each time: the race is on creating the store
        project = make_project(tmp_path / f"project_{attempt}")
        start = tmp_path / f"start_{attempt}"
        children = [subprocess.Popen([sys.executable, "-c", _OPEN_THE_STORE, str(project), str(start)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
                    for _ in range(2)]
        time.sleep(5)  # both past their imports (they wait for the start file)
        start.touch()
        outputs = [child.communicate(timeout=CHILD_TIMEOUT)[0] for child in children]
        for output in outputs:
            assert "tracking: True" in output and "MLflow tracking is off" not in output, output[-3000:]
        assert (project / "mlruns.db").exists()
    tally.add("runs started together on a new MLflow store", 6)
