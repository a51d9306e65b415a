#!/usr/bin/env bash
# The whole `kedro run --env cifar10_dev` with each backend for the passes over images, side by side:
# runtime.backend=torch (eager PyTorch, the path before ONNX Runtime extraction) and runtime.backend=auto
# (ONNX Runtime on a CPU), one after the other, each in a fresh scratch project of this checkout
# (needs ../shared/datasets/cifar10-dev). Prints both wall times, their ratio, where the time went
# (extraction, training), and how far the two runs' evaluation_metrics.json are apart.
#
#   benchmarks/whole_run_backends.sh [PYTHON]        # ~8 min on 2 cores
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-$repo/.venv/bin/python}
work=$(mktemp -d)
ln -sfn "$repo/../shared" "$work/shared"

for backend in torch auto; do
  proj=$work/$backend
  mkdir -p "$proj/src" "$proj/data/01_raw"
  cp -r "$repo/conf" "$repo/pyproject.toml" "$repo/.telemetry" "$proj/"
  rm -rf "$proj/conf/local/"*
  (cd "$proj" && PYTHONPATH="$repo/src" "$python" -m kedro run --pipelines data_prep >/dev/null 2>&1)  # the demo
  rm -rf "$proj/data/02_intermediate" "$proj/data/0[3-8]_"* "$proj/mlruns"
  start=$(date +%s.%N)
  (cd "$proj" && PYTHONPATH="$repo/src" TQDM_DISABLE=1 "$python" -m kedro run --env cifar10_dev \
     --params "runtime.backend=$backend" >"$work/$backend.log" 2>&1)
  end=$(date +%s.%N)
  echo "$backend $(echo "$end - $start" | bc)" >>"$work/times"
done

"$python" - "$work" <<'EOF'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
times = dict(line.split() for line in (work / "times").read_text().splitlines())
torch_s, auto_s = float(times["torch"]), float(times["auto"])
print(f"kedro run --env cifar10_dev, runtime.backend=torch: {torch_s:7.1f} s")
print(f"kedro run --env cifar10_dev, runtime.backend=auto:  {auto_s:7.1f} s   ({torch_s / auto_s:.2f}x faster)")
for backend in ("torch", "auto"):
    log = (work / f"{backend}.log").read_text()
    onnx = "Exported the frozen backbone" in log and "running the pass in PyTorch" not in log
    print(f"  {backend}: features extracted by {'onnxruntime' if onnx else 'torch'}")


def numbers(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{prefix}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, float(value)


def metrics_of(backend):  # versioned: the file sits in a folder named after the dataset
    found = next(p for p in (work / backend / "data/08_reporting").rglob("evaluation_metrics.json") if p.is_file())
    return dict(numbers(json.loads(found.read_text())))


metrics = {b: metrics_of(b) for b in ("torch", "auto")}
apart = {key: abs(value - metrics["auto"][key]) for key, value in metrics["torch"].items() if key in metrics["auto"]}
over = {key: value for key, value in apart.items() if value > 1e-4}
print(f"evaluation_metrics.json: {len(apart)} figures, {len(over)} apart by more than 1e-4")
for key in sorted(over, key=over.get, reverse=True)[:12]:
    print(f"  {key}: torch {metrics['torch'][key]:.6g}, auto {metrics['auto'][key]:.6g}")
print(f"logs in {work}")
EOF
