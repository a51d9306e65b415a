"""Every `kedro run` command in the README and in the manual (docs/) names pipelines, environments,
parameters and datasets that exist, and runs, so a stranger who copies one gets a run, not a typo's
error."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project, find_pipelines
from omegaconf import OmegaConf

from image_classification.parameters.known_keys import check_parameters

from .conftest import REPO_ROOT, cli_params, noise_image, png_bytes, write_files

README = REPO_ROOT / "README.md"
# the manual's pages, decision pages included (mkdocs.yml's nav lists them all; tests/test_docs.py checks that)
DOC_PAGES = sorted((REPO_ROOT / "docs").rglob("*.md"))


def run_commands(text: str) -> list[str]:
    """The `kedro run` commands of a Markdown text: every line of its bash blocks (each part of an `&&`
    chain, comments cut off) and every inline `kedro run ...` code span, whitespace normalised (an
    inline span may wrap across lines)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`(kedro run[^`]*)`", text)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [part.strip() for line in lines for part in line.split("&&")] + inline
    # commands with <placeholders> are templates in prose; the concrete examples are checked
    return sorted({" ".join(c.split()) for c in commands if c.startswith("kedro run") and "<" not in c})


def readme_commands() -> list[str]:
    return run_commands(README.read_text())


def documented_commands() -> list[str]:
    """The README's commands and the manual's, each once."""
    found = set(readme_commands())
    for page in DOC_PAGES:
        found.update(run_commands(page.read_text()))
    return sorted(found)


def options(command: str) -> dict[str, str]:
    words = shlex.split(command)[2:]
    found = {}
    for index, word in enumerate(words):
        if word.startswith("--"):
            found[word] = words[index + 1] if index + 1 < len(words) and not words[index + 1].startswith("--") else ""
    return found


@functools.cache
def parameters(env: str | None) -> dict:
    loader = OmegaConfigLoader(
        conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env=env or "base",
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


@functools.cache
def catalog() -> dict:
    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env="base")
    return loader["catalog"]


def catalog_names() -> set[str]:
    return set(catalog())


COMMANDS = documented_commands()


def test_the_readme_shows_the_first_run_and_how_to_bring_images():
    commands = readme_commands()
    assert "kedro run" in commands
    assert any("data_prep.source.kind=folder_tree" in c for c in commands)
    assert any("data_prep.source.kind=csv" in c for c in commands)
    assert any(c.startswith("kedro run --pipelines predict") for c in commands)
    assert len(commands) >= 5


def test_the_manual_has_run_commands():
    # the commands moved from the README into docs/ (sources, backbones, stages, versions, Dask, ...)
    manual = {c for page in DOC_PAGES for c in run_commands(page.read_text())}
    assert len(manual) >= 15
    for expected in ('kedro run --params "model.backbone=mobilenet_v2"', "kedro run --pipelines evaluate,zero_shot",
                     'kedro run --pipelines data_prep --params "runtime.dask.address=local"'):
        assert expected in manual


def test_an_inline_command_that_wraps_is_read_whole():
    assert run_commands("run `kedro run --env\ndefects_dev` here") == ["kedro run --env defects_dev"]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_names_things_that_exist(command):
    configure_project("image_classification")
    known_pipelines = set(find_pipelines()) | {"__default__"}
    given = options(command)
    unknown_options = set(given) - {"--pipelines", "--params", "--env", "--load-versions"}
    assert not unknown_options, f"{command}: unexpected options {unknown_options}"
    for name in filter(None, given.get("--pipelines", "").split(",")):
        assert name in known_pipelines, f"{command}: no pipeline '{name}'"
    env = given.get("--env")
    if env:
        assert (REPO_ROOT / "conf" / env).is_dir(), f"{command}: no configuration environment '{env}'"
    params = OmegaConf.create(parameters(env))
    for pair in filter(None, given.get("--params", "").split(",")):
        key = pair.split("=", 1)[0]
        assert OmegaConf.select(params, key, default="<missing>") != "<missing>", f"{command}: no parameter '{key}'"
    # and nothing in it is refused before the run: no unknown key, no setting its source kind ignores
    check_parameters(OmegaConf.to_container(OmegaConf.merge(params, cli_params(given.get("--params", "")))),
                     parameters(None))
    for pair in filter(None, given.get("--load-versions", "").split(",")):
        assert pair.split(":", 1)[0] in catalog_names(), f"{command}: no dataset '{pair}'"


# ----------------------------------------------------------------------------- the commands, run

# Every README and manual command runs as written, on small stand-ins for the paths it names, with
# settings that only make it quicker (they change no behaviour a reader relies on).
FAST = "train.epochs=2,evaluate.bootstrap_samples=100,runtime.threads=1,runtime.workers=0,predict.workers=0"
CIFAR_CLASSES = ("airplane", "automobile", "ship", "truck", "bird", "cat", "deer", "dog", "frog", "horse")
SHARED_WEIGHTS = REPO_ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet_coral_tflite.pth"
# Environments whose images are set in their conf, not on the command line: the run reads the stand-in
# instead (cifar10-dev's 5,000 photos and defects-dev's 1,665 take minutes; their figures are in the
# README and docs/results.md). Each names the data_prep.source key it sets and the stand-in for it; the
# CSV its predict reads (a manifest of the same images) is replaced by a small one.
ENV_SOURCES = {"cifar10_dev": ("root", "/data/cifar"), "defects_dev": ("csv", "/data/defects.csv")}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """Small generated data for every path the README's and the manual's commands name."""
    root = tmp_path_factory.mktemp("readme_data")
    seed = iter(range(3000, 9000))

    def images(folder: Path, count: int) -> list[Path]:
        return write_files(folder, {f"{folder.name}_{i:02d}.png": png_bytes(noise_image(next(seed), (48, 48)))
                                    for i in range(count)})

    for name in CIFAR_CLASSES:
        images(root / "cifar" / name, 5)
    labelled = {label: images(root / "parts" / label, 12) for label in ("valid", "invalid")}
    for kind in ("scratched", "blurred"):
        images(root / "parts_unseen" / kind, 4)
    csv = root / "binary_classification.csv"
    csv.write_text("path,label\n" + "".join(f"{path},{label}\n" for label, paths in labelled.items() for path in paths))
    # as defects-dev's manifest: a group per module (two photos each), and columns the source ignores
    defects = root / "defects.csv"
    defects.write_text("path,label,kind,group\n" + "".join(
        f"{path},{label},{label}-kind,module-{label}-{i // 2}\n" for label, paths in labelled.items()
        for i, path in enumerate(paths)))
    new = images(root / "new_images", 5)
    (root / "new_images" / "notes.txt").write_text("not an image")
    (root / "new.csv").write_text("path\n" + "".join(f"{path}\n" for path in new))
    return {"/data/cifar": str(root / "cifar"), "/data/binary_classification.csv": str(csv),
            "/data/parts_unseen": str(root / "parts_unseen"), "/data/parts": str(root / "parts"),
            "/data/new_images": str(root / "new_images"), "/data/new.csv": str(root / "new.csv"),
            "/data/defects.csv": str(defects),
            "/models/mobilenet_v2.pth": str(SHARED_WEIGHTS)}


def fresh_clone(project: Path, env: str) -> Path:
    """A project as a fresh clone has it: its conf (base and ``env``), no data, no demo built."""
    for folder in ("base", env):
        shutil.copytree(REPO_ROOT / "conf" / folder, project / "conf" / folder)
    (project / "conf" / "local").mkdir()
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / item, project / item)
    (project / "src").mkdir()  # Kedro wants the folder; the package itself is installed
    return project


def as_run_here(command: str, stand_ins: dict[str, str], project: Path) -> list[str]:
    """The documented command with its paths and version timestamps replaced, an environment's image
    folder replaced by its stand-in, and FAST added to --params."""
    for path, stand_in in stand_ins.items():  # longest first: /data/parts_unseen before /data/parts
        command = command.replace(path, stand_in)
    for name, stamp in re.findall(r"(\w+):(\d{4}-\d\d-\d\dT[\d.]+Z)", command):
        versions = sorted(path.name for path in (project / catalog()[name]["filepath"]).iterdir())
        command = command.replace(f"{name}:{stamp}", f"{name}:{versions[-1]}")
    words = shlex.split(command)
    fast = FAST
    if options(command).get("--env") in ENV_SOURCES:
        key, path = ENV_SOURCES[options(command)["--env"]]
        fast += f",data_prep.source.{key}={stand_ins[path]}"
        if "predict.source" not in command:  # the environment's predict scores its own manifest: a stand-in too
            fast += f",predict.source.csv={stand_ins['/data/new.csv']}"
    if "--params" in words:
        words[words.index("--params") + 1] += "," + fast
    else:
        words += ["--params", fast]
    return [sys.executable, "-m", "kedro", *words[1:]]


def mobilenet_v2_weights_cached() -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, stand_ins, request, tmp_path):
    if "/models/mobilenet_v2.pth" in command and not SHARED_WEIGHTS.is_file():
        pytest.skip(f"needs {SHARED_WEIGHTS}")
    project = tmp_path / "project"
    env = options(command).get("--env")
    if env:  # a whole run in its own environment, from a fresh clone (nothing built yet, not even the demo)
        fresh_clone(project, env)
    else:  # a project that has run once (for commands that rerun a stage), the user's conf/local left out
        shutil.copytree(request.getfixturevalue("demo_run"), project)
    arguments = as_run_here(command, stand_ins, project)
    result = subprocess.run(arguments, cwd=project, capture_output=True, text=True, timeout=1200,
                            stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "160"})
    output = f"{' '.join(arguments)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    if command.endswith('"model.backbone=mobilenet_v2"') and not mobilenet_v2_weights_cached():
        # documented: without the weights the run stops before any work and says how to get them
        assert result.returncode == 1, output
        assert "not in torchvision's cache" in result.stderr and "Traceback" not in output, output
        return
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
