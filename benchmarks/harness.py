"""What every benchmark shares: the dev data sets, the feature cache, timing, seeding and the results file.

A benchmark is a module of this package, run from the repository root as ``python -m benchmarks.NAME``.
It measures its arms side by side in one run, prints its table, and with ``--results-file PATH``
(:func:`parser` adds it) appends one row per arm (and fold, where it has folds) to a CSV or JSON-lines
file through :func:`write_results`; ``python -m benchmarks.compare OLD NEW`` sets two such files side by side.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# The names benchmarks take from the package's scorers, selection, detectors and runtime: `from benchmarks.harness
# import NAME` imports NAME's module on first use (so a benchmark loads only what it reads, and its memory figures
# stay its own), and this table is the one place in benchmarks/ that says where they live.
MOVED = {
    "image_classification.detectors": ("FUSIONS", "DetectorState", "KNNDetector", "calibrate_threshold",
                                       "separation_metrics"),
    "image_classification.scorers.head": ("fit_head",),
    "benchmarks.folds": ("NAMES", "cross_validate", "fold_scores", "held_out_patch_classifier"),
    "benchmarks.generated": ("make_images", "image_folder", "prepare_predict_inputs", "load_predict_inputs"),
    "benchmarks.pasted_defects": ("KINDS", "paste_defect"),
    "image_classification.scorers.patch_classifier": ("fit_patch_classifier",),
    "image_classification.selection.cross_validation": ("fold_figures", "grouped_folds", "build_fold_stack",
                                                         "fold_split", "STACKED_GAUSSIAN"),
    "image_classification.runtime.choice": ("BACKENDS", "torch_device"),
    "image_classification.runtime.backends": ("build_backend", "onnx_session"),
    "image_classification.runtime.export": ("export_feature_model", "export_onnx"),
    "image_classification.runtime.parity": ("parity",),
    "image_classification.runtime.loader": ("ImageFiles", "image_loader"),
    "image_classification.runtime.extraction": ("extract_backbone_features",),
    "image_classification.runtime.scoring": ("head_outputs", "model_outputs"),
    "image_classification.runtime.graphs": ("torch_features",),
}
_HOME = {name: module for module, names in MOVED.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"
DEFECTS_DEV = DATASETS / "defects-dev"
CIFAR10_DEV = DATASETS / "cifar10-dev"
VALID, INVALID = ("airplane", "automobile", "ship", "truck"), ("bird", "cat", "deer", "dog")  # cifar10-dev's task
NEAR, FAR = ("frog", "horse"), ("digit", "photo", "texture")  # its unseen kinds, near, and the demo's, far
K = 5  # zero_shot's kNN
DEFECTS_DEV_CACHE = Path("/tmp/defects_quality_features.safetensors")  # defects_dev_features' default cache
CIFAR10_DEV_CACHE = Path("/tmp/open_world_features.safetensors")  # cifar10_dev_features' default cache
SEED = 42
TARGET_PRECISION = 0.9


# --- running: arguments, progress bars, seeds, timing ---------------------------------------------------------

def parser(description: str | None, raw: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the harness's own option, ``--results-file``."""
    run_as = Path(sys.argv[0])  # `python -m benchmarks.NAME` runs benchmarks/NAME.py
    made = argparse.ArgumentParser(prog=f"python -m benchmarks.{run_as.stem}" if run_as.parent.name == "benchmarks"
                                   else None, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter if raw else
                                   argparse.HelpFormatter)
    made.add_argument("--results-file", type=Path, default=None,
                      help="append this run's rows to this CSV (.json or .jsonl: JSON lines), for "
                           "`python -m benchmarks.compare OLD NEW`")
    return made


def quiet_progress() -> None:
    """No progress bars in the printed report, in this process and the processes it starts.

    tqdm reads ``TQDM_DISABLE`` once, when it is first imported, and the project's modules import it: where
    they have done so already, tqdm's bars are turned off by default here as well.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    import tqdm.std

    if getattr(tqdm.std.tqdm.__init__, "quiet_progress", False):
        return
    noisy = tqdm.std.tqdm.__init__

    def quiet(self, *args, **kwargs) -> None:
        kwargs.setdefault("disable", True)
        noisy(self, *args, **kwargs)

    quiet.quiet_progress = True
    tqdm.std.tqdm.__init__ = quiet


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def interleaved(arms: Mapping[str, Callable[[], object]], rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds of each call of every arm over ``rounds`` rounds that interleave the arms (so a slow spell of
    the machine hits them all), and each arm's last result."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    results = {}
    for _ in range(rounds):
        for name, run in arms.items():
            started = time.perf_counter()
            results[name] = run()
            seconds[name].append(time.perf_counter() - started)
    return seconds, results


def medians(seconds: Mapping[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in seconds.items()}


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (VmHWM), MiB."""
    return _status_mib("VmHWM")


def anonymous_mib() -> float:
    """This process's anonymous resident memory now (RssAnon: not pages of a mapped file), MiB."""
    return _status_mib("RssAnon")


def _status_mib(key: str) -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status[key].split()[0]) / 1024


def child_option(parser: argparse.ArgumentParser, *names: str) -> None:
    """A hidden ``--child NAMES...``: the benchmark runs one measurement in this process (see :func:`in_child`)."""
    parser.add_argument("--child", nargs=len(names), metavar=names, help=argparse.SUPPRESS)


def in_child(benchmark: str, *arguments: object, timeout: float | None = None) -> dict | None:
    """Run ``python -m benchmarks.BENCHMARK --child ARGUMENTS`` in a fresh process, so its time and peak memory
    are its own; the JSON object it printed last, or None when it ran past ``timeout`` seconds."""
    command = [sys.executable, "-m", f"benchmarks.{benchmark}", "--child", *map(str, arguments)]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the results file ----------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (or the platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def revision() -> str:
    """``git rev-parse --short HEAD`` of this checkout, ``-dirty`` when tracked files differ from it; "" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("-dirty" if dirty else "")


FIRST_COLUMNS = ("benchmark", "arm", "fold")
LAST_COLUMNS = ("revision", "date", "cpu", "settings")


def write_results(path: Path | None, benchmark: str, rows: Iterable[Mapping], args: argparse.Namespace | None = None
                  ) -> None:
    """Append ``rows`` (each an ``arm``, a ``fold`` where it has one, and metric columns) to ``path``.

    Every row gets the benchmark's name, the revision, the date (UTC), the CPU model and the run's
    settings (its arguments). A ``.json`` or ``.jsonl`` path gets one JSON object per line; any other a
    CSV, whose header grows (the file rewritten) when a row brings a column it lacks. Nothing without a path.
    """
    rows = list(rows)
    if path is None or not rows:
        return
    settings = " ".join(f"{key}={value}" for key, value in sorted(vars(args or argparse.Namespace()).items())
                        if key != "results_file")
    stamp = {"revision": revision(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "cpu": cpu_model(), "settings": settings}
    rows = [{"benchmark": benchmark, **{key: _plain(value) for key, value in row.items()}, **stamp} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".json", ".jsonl"):
        with path.open("a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        _append_csv(path, rows)
    print(f"{len(rows)} rows appended to {path}")


def _plain(value):
    """numpy and torch scalars as Python ones, booleans as 0 and 1; None and NaN as an empty cell."""
    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
    value = int(value) if isinstance(value, bool) else value
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _append_csv(path: Path, rows: list[dict]) -> None:
    old_rows: list[dict] = []
    header: list[str] = []
    if path.is_file() and path.stat().st_size:
        with path.open(newline="") as file:
            header = next(csv.reader(file))
    new = [key for row in rows for key in row if key not in header]
    if header and not new:
        with path.open("a", newline="") as file:
            csv.DictWriter(file, header).writerows(rows)
        return
    if header:  # a column this file lacks: rewrite it with the wider header
        with path.open(newline="") as file:
            old_rows = list(csv.DictReader(file))
    keys = list(dict.fromkeys([*header, *(key for row in rows for key in row)]))
    middle = [key for key in keys if key not in FIRST_COLUMNS + LAST_COLUMNS]
    header = [key for key in FIRST_COLUMNS if key in keys] + middle + [key for key in LAST_COLUMNS if key in keys]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, header)
        writer.writeheader()
        writer.writerows(old_rows + rows)


# --- the dev data sets ---------------------------------------------------------------------------------------

def feature_cache(path: Path, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s payload (``{"tensors": name -> tensor, "metadata": a JSON-able dict}``), kept in ``path``.

    The file is read instead when it was written for ``key`` (a string that names what was computed and
    from what). It is SafetensorsDataset's layout, with ``key`` beside the tensors as a uint8 tensor named
    "key", as defects-dev feature caches were written before this harness (so those are reused).
    """
    if path.is_file():
        tensors = load_file(path)
        stored = tensors.pop("key", None)
        stored = bytes(stored.tolist()).decode() if stored is not None else "no key"
        if stored == key:
            with safe_open(path, framework="pt") as file:
                metadata = json.loads((file.metadata() or {}).get("image_classification", "{}"))
            print(f"features from {path}")
            return {"tensors": tensors, "metadata": metadata}
        print(f"{path} not reused: it holds {stored}, not {key}")
    payload = compute()
    payload = {**payload, "tensors": {name: tensor.contiguous() for name, tensor in payload["tensors"].items()}}
    save_file({**payload["tensors"], "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, path,
              metadata={"image_classification": json.dumps(payload["metadata"], sort_keys=True)})
    return payload


def defects_dev(data: Path = DEFECTS_DEV) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """defects-dev's manifest, its targets (valid = 1) and groups (modules)."""
    if not (data / "manifest.csv").is_file():
        raise SystemExit(f"{data}/manifest.csv not found: this benchmark needs ../shared/datasets/defects-dev")
    manifest = pd.read_csv(data / "manifest.csv")
    return manifest, (manifest["label"] == "valid").to_numpy().astype(int), manifest["group"].to_numpy()


def defects_dev_features(manifest: pd.DataFrame, root: Path, backbone: str, grid: int, cache: Path
                         ) -> dict[str, torch.Tensor]:
    """Head inputs, pooled features and patches of every image (the pipeline's frozen-backbone pass), cached."""
    from benchmarks.harness import extract_backbone_features
    from image_classification.backbones import backbone_spec, build_backbone
    from image_classification.patches import bytes_per_image

    def extract() -> dict:
        torch.manual_seed(0)
        start = time.perf_counter()
        out = extract_backbone_features(build_backbone(backbone), [str(root / p) for p in manifest["path"]],
                                        backbone_spec(backbone), torch.device("cpu"), batch_size=32, patch_grid=grid)
        print(f"extracted {len(manifest)} images in {time.perf_counter() - start:.0f} s; patches "
              f"{tuple(out['patches'].shape)}, {bytes_per_image(grid, out['patches'].shape[-1]):,} bytes per image")
        if any(out["errors"]):
            raise SystemExit(f"unreadable images: {[e for e in out['errors'] if e][:3]}")
        return {"tensors": {name: out[name] for name in ("head_input", "pooled", "patches", "fine_patches")},
                "metadata": {}}

    key = f"{backbone}|{grid}|fine|{len(manifest)}|{manifest['sha256'].iloc[0]}|{manifest['sha256'].iloc[-1]}"
    return feature_cache(cache, key, extract)["tensors"]


def select_images(root: Path, count: int, seed: int = SEED) -> list[dict]:
    """``count`` cifar10-dev images, as even across the eight classes as ``count`` allows, split 70/20/10."""
    from image_classification.pipelines.data_prep.nodes import split_images

    rng = np.random.default_rng(seed)
    classes = [(name, "valid") for name in VALID] + [(name, "invalid") for name in INVALID]
    rows = []
    for position, (name, label) in enumerate(classes):
        files = sorted((root / name).glob("*.jpg"))
        wanted = count // len(classes) + (position < count % len(classes))
        if len(files) < wanted:
            raise SystemExit(f"{root / name} holds {len(files)} images, {wanted} are needed; ask for fewer --images")
        for index in sorted(rng.choice(len(files), size=wanted, replace=False)):
            rows.append({"path": str(files[index]), "label": label, "kind": label})
    images = pd.DataFrame(rows)
    images["split"] = None  # no manual splits
    images["split_group"] = images["path"]  # every image on its own
    split = split_images(images, {"train": 0.7, "val": 0.2, "test": 0.1}, seed)
    split["target"] = (split["label"] == "valid").astype(int)
    return split[["path", "label", "kind", "split", "target"]].to_dict("records")


def cifar10_dev_parameters() -> dict:
    """The parameters of ``kedro run --env cifar10_dev`` (its keys over base's, as the project merges them)."""
    from kedro.config import OmegaConfigLoader

    from image_classification.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"),
                               **{**CONFIG_LOADER_ARGS, "default_run_env": "cifar10_dev"})
    return loader["parameters"]


def _cifar10_dev_grouped(params: dict) -> pd.DataFrame:
    """data_prep up to the split: the cifar10_dev source, checked and grouped (seed-independent)."""
    from image_classification.demo import ensure_demo
    from image_classification.pipelines.data_prep.nodes import check_images, group_duplicates, list_image_candidates

    source = dict(params["data_prep"]["source"]) | {
        "root": str(CIFAR10_DEV), "zero_shot_root": str(ensure_demo(Path("/tmp/open_world_demo")) / "unseen")}
    candidates, skipped = list_image_candidates(source, "unused")
    checked, rejected = check_images(candidates, skipped, params["data_prep"]["image_checks"])
    grouped, _, _ = group_duplicates(checked, rejected, int(params["data_prep"]["near_duplicate_max_distance"]))
    return grouped


def cifar10_dev_splits(params: dict, seeds: list[int]) -> Iterator[tuple[int, pd.DataFrame]]:
    """Per split seed, data_prep's image index of that split, rows in the first seed's order (the
    feature cache's order, which the split does not change)."""
    from image_classification.parameters.data_prep import SplitFractions
    from image_classification.pipelines.data_prep.nodes import build_image_index, split_images

    grouped, order = _cifar10_dev_grouped(params), None
    for seed in seeds:
        index = build_image_index(split_images(grouped, SplitFractions(**params["data_prep"]["split"]), seed))
        order = index["path"].tolist() if order is None else order
        yield seed, index.set_index("path").loc[order].reset_index()


def cifar10_dev_features(index: pd.DataFrame, model, runtime: dict, train, cache: Path) -> dict:
    """The train stage's feature cache of every image of ``index`` (no patches; the split does not change it)."""
    from image_classification.pipelines.train.nodes import extract_features

    def extract() -> dict:
        start = time.perf_counter()
        payload = extract_features(index, model, runtime, 0, dataclasses.replace(train, patch_grid=0))
        print(f"extracted {len(index)} images in {time.perf_counter() - start:.0f} s")
        return payload

    images = hashlib.sha256("\n".join(index["sha256"]).encode()).hexdigest()[:16]
    key = (f"{model.backbone}|{model.weights}|{model.head_input}|{model.spec.input_size} px|"
           f"{len(index)} images {images}")
    return feature_cache(cache, key, extract)


def knn_scores(train: np.ndarray, other: np.ndarray) -> np.ndarray:
    """zero_shot's kNN detector: the k-th nearest training image's distance after L2 normalisation."""
    from image_classification.detectors import KNNDetector
    return KNNDetector(k=K).fit(train, np.zeros(len(train))).score_samples(other)


def separation(scores: np.ndarray, index: pd.DataFrame) -> dict[str, float]:
    """Near and far AUROC of ``scores`` (higher: more unlike the training images) against the labelled test
    images of ``index`` (a cifar10-dev split); NaN where the index has none of those kinds."""
    from image_classification.detectors import separation_metrics
    test = scores[(index["split"] == "test").to_numpy()]
    unseen = {"near_auroc": index["kind"].isin(NEAR).to_numpy(), "far_auroc": index["kind"].isin(FAR).to_numpy()}
    return {name: separation_metrics(test, scores[rows])["auroc"] if rows.any() else float("nan")
            for name, rows in unseen.items()}
