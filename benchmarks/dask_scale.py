"""The maps over images on a Dask LocalCluster: speed with 1 and 2 workers, memory at two sizes, a scale rehearsal.

Every figure comes from the project's own nodes with ``runtime.dask.address: local`` (worker
processes of one thread each, ``runtime.dask.threads_per_worker``), each measurement in a fresh
process so peaks are its own:

- speed: data_prep's ``check_images`` and predict's ``predict_images`` over ``--images`` generated
  1280x960 camera-like JPEGs, with 1 and then 2 workers; images/s and their ratio (the node's wall
  time, cluster start and model build on each worker included);
- memory: ``predict_images`` over each ``--memory`` count of listed small images (e.g. 5,000 and
  20,000): peak resident memory of the driver and of the largest worker (VmHWM), and the ratio;
- rehearsal: ``--rehearsal N`` small images (64x64, all distinct) through the whole data_prep
  pipeline and then predict's nodes, with the driver's and the workers' memory sampled every
  half second; wall time, images/s per stage, peaks per quarter of each stage.

Run it from the repository root:

    python -m benchmarks.dask_scale                                   # speed, 2,000 JPEGs (~3 min)
    python -m benchmarks.dask_scale --images 0 --memory 5000 20000    # memory (~6 min on 2 cores)
    python -m benchmarks.dask_scale --images 0 --rehearsal 100000     # rehearsal (~20 min on 2 cores)

The model is efficientnet_lite0 with ImageNet weights and an untrained head, scored by ONNX
Runtime; the anomaly detector a kNN on 1,000 vectors (as ``predict_end_to_end.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import image_folder
from benchmarks.harness import load_predict_inputs as load_inputs
from benchmarks.harness import prepare_predict_inputs as prepare_inputs


def small_images(folder: Path, count: int) -> Path:
    """``count`` distinct 64x64 JPEGs (smooth random pictures, so perceptual hashes differ), in
    ``valid`` and ``invalid`` halves; kept between runs."""
    import numpy as np
    from PIL import Image

    for label in ("valid", "invalid"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / ("valid" if index % 2 else "invalid") / f"small_{index:07d}.jpg"
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # drawn for every index: same pictures each time
        if not path.exists():
            Image.fromarray(base).resize((64, 64), Image.Resampling.BILINEAR).save(path, format="JPEG", quality=85)
    return folder


def listed(folder: Path, count: int) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*.jpg"))[:count]


def _worker_peak_mib() -> float:
    """harness.peak_rss_mib for a Dask worker: defined in __main__, so it travels by value and the worker
    imports nothing to run it (importing the harness would raise the peak it measures)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024


def _check(paths: list[str], dask) -> dict:
    import pandas as pd

    from image_classification.pipelines.data_prep.nodes import check_images

    candidates = pd.DataFrame({"path": paths, "label": "valid", "kind": "valid", "split": None, "group": None},
                              dtype="string")
    skipped = pd.DataFrame(columns=["path", "label", "kind", "reason"], dtype="string")
    checked, rejected = check_images(candidates, skipped, {"min_side": 16, "max_pixels": 50_000_000, "workers": 1}, dask)
    assert len(checked) + len(rejected) == len(paths) and rejected.empty
    return {}


def _predict(paths: list[str], dask, workdir: Path) -> dict:
    import pandas as pd

    from image_classification.pipelines.predict.nodes import (
        PredictConfig,
        check_onnx_parity,
        predict_images,
    )

    inputs, predict = load_inputs(workdir), PredictConfig(backend="auto", device="cpu", batch_size=32)
    images = pd.DataFrame({"path": paths, "error": ""}, dtype="string")
    parity = check_onnx_parity(inputs["model_checkpoint"], inputs["onnx_model"], images, inputs["operating_point"],
                               predict)
    started = time.perf_counter()
    table, summary = predict_images(inputs["model_checkpoint"], inputs["onnx_model"], parity, inputs["anomaly_detector"],
                                    inputs["operating_point"], images, predict, dask)
    assert table["path"].tolist() == paths and summary["errors"] == 0, summary
    return {"seconds": time.perf_counter() - started, "backend": summary["backend"],
            "workers_used": summary["dask"]["workers"]}


def child(args: argparse.Namespace) -> None:
    """In a fresh process, on a fresh LocalCluster: the node twice over the same paths, cold (workers
    import the libraries and build the model) and warm (a long-lived cluster's case); print seconds
    and peak memory as JSON."""
    from distributed import Client, LocalCluster

    from image_classification.distributed import DaskSettings

    harness.quiet_progress()
    paths = json.loads(Path(args.child).read_text())
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dask = DaskSettings(address=cluster.scheduler_address, partition_size=args.partition)
        result = {}
        for run in ("cold", "warm"):
            started = time.perf_counter()
            outcome = _check(paths, dask) if args.stage == "check" else _predict(paths, dask, Path(args.workdir))
            result[run] = outcome.get("seconds", time.perf_counter() - started)
            result |= {key: value for key, value in outcome.items() if key != "seconds"}
        worker_mb = max(client.run(_worker_peak_mib).values())
    print("RESULT " + json.dumps(result | {"images": len(paths), "driver_mb": harness.peak_rss_mib(),
                                           "worker_mb": worker_mb}))


def measure(stage: str, paths: list[str], workers: int, args: argparse.Namespace, workdir: Path) -> dict:
    listing = workdir / f"paths_{stage}_{len(paths)}.json"
    listing.write_text(json.dumps(paths))
    command = [sys.executable, "-m", "benchmarks.dask_scale", "--child", str(listing), "--stage", stage, "--workers", str(workers),
               "--partition", str(args.partition), "--workdir", str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def speed(workdir: Path, args: argparse.Namespace) -> list[dict]:
    paths = listed(image_folder(workdir, args.images, args.distinct), args.images)
    print(f"\nSpeed over {len(paths)} JPEGs of 1280x960 on a LocalCluster, workers of 1 thread, partitions of "
          f"{args.partition} (cpu count {os.cpu_count()}). Cold: the first run on fresh workers (imports, model "
          "build); warm: the same run again, as on a long-lived cluster.")
    print(f"{'stage':24s} {'run':5s} {'1 worker img/s':>15s} {'2 workers img/s':>16s} {'ratio':>7s}")
    rows = []
    for stage, label in (("check", "data_prep check_images"), ("predict", "predict predict_images")):
        one, two = (measure(stage, paths, workers, args, workdir) for workers in (1, 2))
        for run in ("cold", "warm"):
            rate_one, rate_two = len(paths) / one[run], len(paths) / two[run]
            print(f"{label:24s} {run:5s} {rate_one:15.1f} {rate_two:16.1f} {rate_two / rate_one:6.2f}x"
                  + (f"   (backend {two['backend']}, {two['workers_used']} workers used)" if stage == "predict" else ""))
            rows += [{"arm": f"speed, {label}, {run}, {workers} worker(s)", "img_s": rate}
                     for workers, rate in ((1, rate_one), (2, rate_two))]
    return rows


def memory(workdir: Path, args: argparse.Namespace) -> list[dict]:
    folder = small_images(workdir / "small", max(args.memory))
    rows = [measure("predict", listed(folder, count), args.workers, args, workdir) for count in args.memory]
    print(f"\nPeak resident memory of predict_images on a LocalCluster of {args.workers} workers (partitions of "
          f"{args.partition}):")
    header = f"{'listed images':>14s} {'warm s':>8s} {'img/s':>7s} {'driver MB':>10s} {'largest worker MB':>18s}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row['images']:14d} {row['warm']:8.1f} {row['images'] / row['warm']:7.1f} {row['driver_mb']:10.0f} "
              f"{row['worker_mb']:18.0f}")
    first, last = rows[0], rows[-1]
    print(f"{last['images'] / first['images']:.0f}x the images: driver peak x{last['driver_mb'] / first['driver_mb']:.2f}, "
          f"worker peak x{last['worker_mb'] / first['worker_mb']:.2f} (target: at most 1.2x)")
    return [{"arm": f"memory, {row['images']} images", "warm_s": row["warm"], "img_s": row["images"] / row["warm"],
             "driver_mb": row["driver_mb"], "worker_mb": row["worker_mb"]} for row in rows]


class MemorySampler:
    """Resident memory of this process and of all its descendants (the cluster), every ``every`` s."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.process, self.every, self.samples = psutil.Process(), every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            workers = []
            for process in self.process.children(recursive=True):
                try:
                    workers.append(process.memory_info().rss)
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic(), self.process.memory_info().rss, max(workers, default=0)))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def quarters(self, start: float, stop: float) -> list[tuple[float, float]]:
        """Peak driver and largest-process MB in each quarter of [start, stop]."""
        peaks = []
        for quarter in range(4):
            low, high = start + (stop - start) * quarter / 4, start + (stop - start) * (quarter + 1) / 4
            inside = [(driver, worker) for when, driver, worker in self.samples if low <= when <= high] or [(0, 0)]
            peaks.append((max(d for d, _ in inside) / 2**20, max(w for _, w in inside) / 2**20))
        return peaks


def _kept_dataset():
    from kedro.io import MemoryDataset

    class Kept(MemoryDataset):
        """An output the runner cannot release, so it can be read after the run."""

        def _release(self) -> None:
            pass

    return Kept


def rehearsal(workdir: Path, args: argparse.Namespace) -> list[dict]:
    """N small images through data_prep (every node) and predict's nodes on one LocalCluster setting."""
    import pandas as pd
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from image_classification.distributed import DaskSettings
    from image_classification.pipelines.data_prep import create_pipeline
    from image_classification.pipelines.predict.nodes import (
        PredictConfig,
        check_onnx_parity,
        list_prediction_images,
        predict_images,
    )

    harness.quiet_progress()
    _Kept = _kept_dataset()
    started = time.perf_counter()
    folder = small_images(workdir / f"rehearsal_{args.rehearsal}", args.rehearsal)
    print(f"\nRehearsal: {args.rehearsal} distinct 64x64 JPEGs ready in {time.perf_counter() - started:.0f} s; "
          f"LocalCluster of {args.workers} workers, partitions of {args.partition}")
    dask = DaskSettings(address="local", workers=args.workers, partition_size=args.partition, dashboard_address=None)
    inputs = load_inputs(workdir)
    stages = {}
    def driver_cpu() -> float:
        return sum(sampler.process.cpu_times()[:2])

    with MemorySampler() as sampler:
        begin, cpu = time.monotonic(), driver_cpu()
        catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in {
            "params:data_prep.source": {"kind": "folder_tree", "root": str(folder)},
            "params:data_prep.image_checks": {"min_side": 16, "max_pixels": 50_000_000, "workers": 1},
            "params:data_prep.near_duplicate_max_distance": 2,
            "params:data_prep.split": {"train": 0.7, "val": 0.2, "test": 0.1}, "params:seed": 42,
            "params:runtime.dask": dask, "demo_images": "unused"}.items()})
        for name in ("image_index", "rejected_images", "duplicate_report", "split_summary"):
            catalog[name] = _Kept(copy_mode="assign")
        SequentialRunner().run(create_pipeline(), catalog)
        index = catalog.load("image_index")
        stages["data_prep (whole pipeline)"] = (begin, time.monotonic(), len(index), driver_cpu() - cpu)
        begin, cpu = time.monotonic(), driver_cpu()
        predict = PredictConfig(source={"kind": "folder_tree", "root": str(folder)}, device="cpu")
        images = list_prediction_images(predict.source, "unused")
        parity = check_onnx_parity(inputs["model_checkpoint"], inputs["onnx_model"], images, inputs["operating_point"],
                               predict)
        table, summary = predict_images(inputs["model_checkpoint"], inputs["onnx_model"], parity,
                                        inputs["anomaly_detector"], inputs["operating_point"], images, predict, dask)
        stages["predict (list, parity, score)"] = (begin, time.monotonic(), len(table), driver_cpu() - cpu)
    assert len(index) == args.rehearsal and len(table) == args.rehearsal and summary["errors"] == 0
    assert isinstance(table, pd.DataFrame) and table["path"].is_unique
    print(f"{'stage':32s} {'images':>8s} {'seconds':>8s} {'img/s':>7s} {'driver CPU ms/img':>18s}   "
          "peak MB per quarter (driver / largest worker)")
    for name, (begin, end, count, cpu) in stages.items():
        quarters = "  ".join(f"{driver:4.0f}/{worker:4.0f}" for driver, worker in sampler.quarters(begin, end))
        print(f"{name:32s} {count:8d} {end - begin:8.0f} {count / (end - begin):7.1f} {1000 * cpu / count:18.2f}   "
              f"{quarters}")
    # the driver's CPU time per image bounds how far more workers can go before it is the bottleneck
    for name, (begin, end, count, cpu) in stages.items():
        print(f"{name}: the driver spends {1000 * cpu / count:.2f} ms of CPU per image, so it could feed at most "
              f"about {count / max(cpu, 1e-9):,.0f} images/s, {count / max(cpu, 1e-9) / (count / (end - begin)):.0f}x "
              "this run's rate")
    print(f"predict backend {summary['backend']}, {summary['dask']['workers']} workers used")
    return [{"arm": f"rehearsal, {name}", "images": count, "seconds": end - begin, "img_s": count / (end - begin),
             "driver_cpu_ms_per_img": 1000 * cpu / count,
             "driver_peak_mb": max(driver for driver, _ in sampler.quarters(begin, end)),
             "worker_peak_mb": max(worker for _, worker in sampler.quarters(begin, end))}
            for name, (begin, end, count, cpu) in stages.items()]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs for the 1-vs-2-worker speed (0: skip)")
    parser.add_argument("--memory", type=int, nargs="*", default=[], help="listed images for the memory comparison")
    parser.add_argument("--rehearsal", type=int, default=0, help="images for the scale rehearsal (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="workers for memory and rehearsal")
    parser.add_argument("--partition", type=int, default=500, help="runtime.dask.partition_size")
    parser.add_argument("--distinct", type=int, default=500, help="distinct 1280x960 files; the rest are hard links")
    parser.add_argument("--workdir", default=None, help="where images and models are kept (default: a temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="predict", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "dask_scale")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args)
        return
    export_s = prepare_inputs(workdir)
    print(f"One-off export of the model to ONNX: {export_s:.1f} s")
    rows = [{"arm": "export", "seconds": export_s}]
    if args.images:
        rows += speed(workdir, args)
    if args.memory:
        rows += memory(workdir, args)
    if args.rehearsal:
        rows += rehearsal(workdir, args)
    harness.write_results(args.results_file, "dask_scale", rows, args)


if __name__ == "__main__":
    main()
