"""`kedro run` on the command line: an error the user can fix ends the run with one line that names
the problem and the fix, exit status 1 and no traceback; a bug keeps its traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from image_classification import cli
from image_classification.errors import SourceError

from .conftest import REPO_ROOT


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch copy of the project's base configuration: nothing has run in it yet."""
    project = tmp_path_factory.mktemp("cli")
    shutil.copytree(REPO_ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / item, project / item)
    (project / "src").mkdir()  # Kedro wants the folder; the package itself is installed
    return project


def kedro_run(project: Path, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedro", "run", *arguments], cwd=project, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "200", **environment})


USER_ERRORS = {
    # name: (arguments, fragments the output must contain)
    "missing_image_folder": (
        ["--pipelines", "data_prep", "--params",
         "data_prep.source.kind=folder_tree,data_prep.source.root=/nonexistent/our_images"],
        ["/nonexistent/our_images"]),
    "impossible_parameter": (
        ["--pipelines", "train", "--params", "model.backbone=resnet9000"],
        ["'resnet9000'", "efficientnet_lite0, efficientnet_lite2, mobilenet_v2"]),
    "misspelt_parameter_key": (
        ["--params", "data_prep.sorce.kind=folder_tree,data_prep.sorce.root=/x"],
        ["unknown parameter 'data_prep.sorce' (did you mean 'data_prep.source'?)"]),
    "missing_pretrained_weights": (
        ["--pipelines", "data_prep,train", "--params",
         "model.backbone=mobilenet_v2,model.weights_path=/nonexistent/mobilenet_v2.pth"],
        ["/nonexistent/mobilenet_v2.pth"]),
    "stage_before_its_inputs": (
        ["--pipelines", "evaluate"],
        ["'backbone_features' does not exist yet", "`kedro run --pipelines train`"]),
    "predict_before_training": (
        ["--pipelines", "predict"],
        ["no trained model yet: 'model_checkpoint' does not exist yet", "run `kedro run` (every stage)"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(USER_ERRORS))
def test_a_user_error_ends_the_run_with_its_message_and_no_traceback(project, name):
    arguments, fragments = USER_ERRORS[name]
    result = kedro_run(project, *arguments)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "Error: " in result.stderr
    assert "PurePosixPath" not in result.stderr  # Kedro's description of a dataset is not the user's business
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])
    assert "IMAGE_CLASSIFICATION_TRACEBACK=1" in result.stderr


@pytest.mark.slow
def test_the_traceback_of_a_user_error_is_there_on_request(project):
    arguments, _ = USER_ERRORS["impossible_parameter"]
    result = kedro_run(project, *arguments, IMAGE_CLASSIFICATION_TRACEBACK="1")
    assert result.returncode == 1
    assert "Traceback" in result.stdout + result.stderr


@pytest.mark.slow
def test_an_unknown_pipeline_is_named_with_the_ones_that_exist(project):
    result = kedro_run(project, "--pipelines", "data_prep,zeroshot")
    assert result.returncode == 2, result.stderr[-3000:]  # a usage error, as click reports them
    assert "no pipeline named 'zeroshot'" in result.stderr
    assert "zero_shot" in result.stderr and "predict" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (project / "data" / "03_primary").exists()  # nothing ran


@pytest.mark.parametrize(("error", "clean"), [
    (SourceError("no folder /x"), True),
    (RuntimeError("a bug"), False),
    (ValueError("a bug too"), False),
])
def test_only_user_errors_lose_their_traceback(monkeypatch, error, clean):
    """In process: whatever Kedro's run raises, only a user error becomes a one-line message."""
    def failing_run(**options):
        raise error

    monkeypatch.setattr(cli, "kedro_run", type("FakeRun", (), {"callback": staticmethod(failing_run)}))
    monkeypatch.delenv(cli.TRACEBACK_VARIABLE, raising=False)
    result = CliRunner().invoke(cli.cli, ["run"])
    assert result.exit_code == 1
    if clean:
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert f"Error: {error}" in result.output
    else:
        assert result.exception is error


@pytest.mark.parametrize(("path", "pipeline"), [
    ("/p/data/04_feature/backbone_features.safetensors", "train"),
    ("/p/data/07_model_output/scored_index.safetensors/2026-12-06T10.00.00.000Z/scored_index.safetensors", "score"),
    ("/p/data/06_models/anomaly_detector.safetensors/2026-12-06T10.00.00.000Z/anomaly_detector.safetensors",
     "zero_shot"),
])
def test_a_damaged_artefact_is_one_error_line_naming_the_pipeline_that_writes_it(monkeypatch, path, pipeline):
    from image_classification.errors import ArtefactError

    def failing_run(**options):
        raise ArtefactError(f"'{path}' is damaged: the bytes of its tensor 'x' do not match; {ArtefactError.RERUN}")

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(cli, "kedro_run", type("FakeRun", (), {"callback": staticmethod(failing_run)}))
    monkeypatch.delenv(cli.TRACEBACK_VARIABLE, raising=False)
    result = CliRunner().invoke(cli.cli, ["run"])
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(error_lines) == 1
    assert path in error_lines[0] and f"run `kedro run --pipelines {pipeline}` to write" in error_lines[0]
