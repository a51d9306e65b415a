"""The whole ``kedro run --env cifar10_dev`` with each backend for the passes over images, side by side.

``runtime.backend=torch`` (eager PyTorch, the path before ONNX Runtime extraction) and ``runtime.backend=auto``
(ONNX Runtime on a CPU), one after the other, each in a fresh scratch project of this checkout (needs
../shared/datasets/cifar10-dev). Prints both wall times, their ratio, which backend extracted the features,
and how far the two runs' evaluation_metrics.json are apart.

    python -m benchmarks.whole_run_backends [PYTHON]        # ~8 min on 2 cores

PYTHON: the interpreter of a virtualenv with the project's dependencies (default: this checkout's .venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import harness

ARMS = ("torch", "auto")  # runtime.backend


def scratch_project(work: Path, name: str) -> Path:
    """A project folder holding this checkout's conf/ (no local settings), pyproject.toml and .telemetry."""
    project = work / name
    (project / "src").mkdir(parents=True)
    (project / "data" / "01_raw").mkdir(parents=True)
    shutil.copytree(harness.REPO_ROOT / "conf", project / "conf")
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy2(harness.REPO_ROOT / name, project / name)
    for local in (project / "conf" / "local").glob("*"):
        shutil.rmtree(local) if local.is_dir() else local.unlink()
    return project


def numbers(value, prefix: str = ""):
    """Every number of a JSON value, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{prefix}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, float(value)


def metrics_of(project: Path) -> dict[str, float]:
    """The run's evaluation_metrics.json (versioned: the file sits in a folder named after the dataset;
    under the environment's own data root, data/envs/cifar10_dev)."""
    found = next(p for p in (project / "data").rglob("evaluation_metrics.json") if p.is_file())
    return dict(numbers(json.loads(found.read_text())))


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("python", nargs="?", default=str(harness.REPO_ROOT / ".venv" / "bin" / "python"),
                        help="the interpreter to run kedro with (default: this checkout's .venv)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    (work / "shared").symlink_to(harness.REPO_ROOT.parent / "shared")
    environment = os.environ | {"PYTHONPATH": str(harness.REPO_ROOT / "src")}
    seconds = {}
    for backend in ARMS:
        project = scratch_project(work, backend)
        subprocess.run([args.python, "-m", "kedro", "run", "--pipelines", "data_prep"], cwd=project, env=environment,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)  # the demo
        for made in [project / "data" / "02_intermediate", *(project / "data").glob("0[3-8]_*"), project / "mlruns"]:
            shutil.rmtree(made, ignore_errors=True)
        log = work / f"{backend}.log"
        start = time.perf_counter()
        with log.open("w") as output:
            done = subprocess.run([args.python, "-m", "kedro", "run", "--env", "cifar10_dev", "--params",
                                   f"runtime.backend={backend}"], cwd=project, env=environment | {"TQDM_DISABLE": "1"},
                                  stdout=output, stderr=subprocess.STDOUT)
        seconds[backend] = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"kedro run with runtime.backend={backend} failed: see {log}")

    torch_s, auto_s = seconds["torch"], seconds["auto"]
    print(f"kedro run --env cifar10_dev, runtime.backend=torch: {torch_s:7.1f} s")
    print(f"kedro run --env cifar10_dev, runtime.backend=auto:  {auto_s:7.1f} s   ({torch_s / auto_s:.2f}x faster)")
    extracted_by = {}
    for backend in ARMS:
        log = (work / f"{backend}.log").read_text()
        onnx = "Exported the frozen backbone" in log and "running the pass in PyTorch" not in log
        extracted_by[backend] = "onnxruntime" if onnx else "torch"
        print(f"  {backend}: features extracted by {extracted_by[backend]}")
    metrics = {backend: metrics_of(work / backend) for backend in ARMS}
    apart = {key: abs(value - metrics["auto"][key]) for key, value in metrics["torch"].items() if key in metrics["auto"]}
    over = {key: value for key, value in apart.items() if value > 1e-4}
    print(f"evaluation_metrics.json: {len(apart)} figures, {len(over)} apart by more than 1e-4")
    for key in sorted(over, key=over.get, reverse=True)[:12]:
        print(f"  {key}: torch {metrics['torch'][key]:.6g}, auto {metrics['auto'][key]:.6g}")
    print(f"logs in {work}")
    harness.write_results(args.results_file, "whole_run_backends", [
        {"arm": f"runtime.backend={backend}", "seconds": seconds[backend], "extracted_by": extracted_by[backend],
         "metrics_apart": len(over)} for backend in ARMS], args)


if __name__ == "__main__":
    main()
