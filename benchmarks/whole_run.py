"""Wall time of whole runs at two git revisions, side by side, one after the other.

1. ``kedro run --env cifar10_dev`` (needs ../shared/datasets/cifar10-dev), and
2. the stages after train with one fine-tuned backbone block on the demo (``train.trainable_blocks=1``,
   one epoch), where every later stage must read the images through the whole model: before the score
   stage that was three passes, now one.

Each arm runs in a fresh scratch project (the revision's conf/, the demo copied in, so revisions that
cannot build it on demand run too) with that revision's source first on PYTHONPATH.

    python -m benchmarks.whole_run OLD_REV NEW_REV [OLD_PYTHON] [NEW_PYTHON]

OLD_PYTHON / NEW_PYTHON: the interpreter of a virtualenv with that revision's dependencies (default: this
checkout's .venv). A revision from before kedro-mlflow was added should run in a virtualenv without it, or
kedro-mlflow's plugin hooks load into its runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import harness

FINE_TUNED = "train.trainable_blocks=1,train.epochs=1"
WHOLE_MODEL_PASS = re.compile(r"INFO     Scoring .* images through the")


def scratch_project(work: Path, name: str, revision: str, demo: Path) -> tuple[Path, Path]:
    """A worktree of ``revision`` and a project folder with its conf/ (no local settings), pyproject.toml,
    .telemetry and the demo images."""
    tree, project = work / f"tree_{name}", work / name
    subprocess.run(["git", "-C", str(harness.REPO_ROOT), "worktree", "add", "-q", "--detach", str(tree), revision],
                   check=True)
    (project / "src").mkdir(parents=True)
    (project / "data" / "01_raw").mkdir(parents=True)
    shutil.copytree(tree / "conf", project / "conf")
    for file in ("pyproject.toml", ".telemetry"):
        shutil.copy2(tree / file, project / file)
    for local in (project / "conf" / "local").glob("*"):
        shutil.rmtree(local) if local.is_dir() else local.unlink()
    shutil.copytree(demo, project / "data" / "01_raw" / "demo")
    return tree, project


def kedro(python: str, tree: Path, project: Path, *args: str, log: Path | None = None) -> None:
    """``kedro run ARGS`` in ``project`` with ``tree``'s source first on PYTHONPATH; its output to ``log``."""
    with (log.open("w") if log else open(os.devnull, "w")) as output:
        done = subprocess.run([python, "-m", "kedro", "run", *args], cwd=project, stdout=output,
                              stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(tree / "src")})
    if done.returncode:
        raise SystemExit(f"kedro run {' '.join(args)} failed in {project}" + (f": see {log}" if log else ""))


def timed(work: Path, label: str, python: str, tree: Path, project: Path, *args: str) -> dict:
    """Run kedro, print one line of results (wall time, passes through the whole model); return them."""
    log = work / f"{label}.log"
    start = time.perf_counter()
    kedro(python, tree, project, *args, log=log)
    seconds = time.perf_counter() - start
    passes = sum(bool(WHOLE_MODEL_PASS.search(line)) for line in log.read_text().splitlines())
    print(f"{label:<34s} {seconds:8.1f} s   whole-model passes: {passes}", flush=True)
    return {"seconds": seconds, "whole_model_passes": passes}


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("old", help="the old revision (anything git rev-parse takes)")
    parser.add_argument("new", help="the new revision")
    default = str(harness.REPO_ROOT / ".venv" / "bin" / "python")
    parser.add_argument("old_python", nargs="?", default=default, help="the old revision's interpreter")
    parser.add_argument("new_python", nargs="?", default=default, help="the new revision's interpreter")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    demo = harness.REPO_ROOT / "data" / "01_raw" / "demo"
    if not demo.is_dir():
        subprocess.run([args.new_python, "-m", "kedro", "run", "--pipelines", "data_prep"], cwd=harness.REPO_ROOT,
                       stdout=subprocess.DEVNULL, check=True)
    (work / "shared").symlink_to(harness.REPO_ROOT.parent / "shared")  # what each project's ../shared finds
    rows = []
    try:
        for arm, revision, python in (("old", args.old, args.old_python), ("new", args.new, args.new_python)):
            tree, project = scratch_project(work, arm, revision, demo)
            rows.append({"arm": f"{arm} cifar10_dev", **timed(
                work, f"{arm} cifar10_dev ({revision})", python, tree, project, "--env", "cifar10_dev")})
            tree, project = scratch_project(work, f"{arm}_ft", revision, demo)
            kedro(python, tree, project, "--pipelines", "data_prep,train", "--params", FINE_TUNED)
            stages = "evaluate,embedding_analysis,zero_shot"
            if (tree / "src" / "image_classification" / "pipelines" / "score").is_dir():
                stages = "score," + stages
            rows.append({"arm": f"{arm} fine-tuned, after train", **timed(
                work, f"{arm} fine-tuned, after train", python, tree, project, "--pipelines", stages,
                "--params", FINE_TUNED)})
    finally:
        for tree in sorted(work.glob("tree_*")):
            subprocess.run(["git", "-C", str(harness.REPO_ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)
    print(f"logs in {work}")
    harness.write_results(args.results_file, "whole_run", rows, args)


if __name__ == "__main__":
    main()
