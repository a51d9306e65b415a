"""Nodes of the predict pipeline: score new, unlabelled images with the trained model.

Images stream through in batches: decoded by DataLoader workers while the model scores the
previous batch, and only a few numbers per image are kept, so memory stays flat however many
images a folder holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from image_classification.defect_maps import overlay
from image_classification.detectors import Detector, DetectorState, decide
from image_classification.artefacts import Checkpoint
from image_classification.checksums import CONTENT_SHA256
from image_classification.backbones import BackboneSpec
from image_classification.distributed import (
    DaskMap,
    DaskSettings,
    dask_map,
    worker_cached,
)
from image_classification.images import load_rgb
from image_classification.image_files import ImageReadError
from image_classification.parameters.predict import PredictConfig
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.runtime.backends import Backend, serving_backend
from image_classification.runtime.choice import onnxruntime_available, torch_device
from image_classification.runtime.export import CHECKPOINT_KEY, export_onnx, onnx_properties, serving_mismatch
from image_classification.runtime.loader import ImageFiles, image_loader
from image_classification.runtime.parity import export_parity
from image_classification.scorers import ServedScore
from image_classification.sources import read_unlabelled

logger = logging.getLogger(__name__)

# which backend output each anomaly detector's feature space is (msp's space is None: the score)
_SPACE_OUTPUT = {"pooled": "features", "embedding": "embedding"}


def _space_features(outputs: dict[str, np.ndarray], space: str | None) -> np.ndarray:
    """A batch's features in a detector's space; a fused detector's spaces side by side."""
    return np.hstack([outputs["score"][:, None] if part == "score" else outputs[_SPACE_OUTPUT[part]]
                      for part in (space or "score").split("+")])


# score: the served candidate's probability of valid (operating_point.json's candidate: the model, or the
# baseline on the pooled features); model_score: the trained model's, the same when the model is served;
# defect_map: grid x grid values (row-major from the top-left of the upright image, higher = more defective)
# by the score evaluate.defect_map_from names, empty when no patch score was fitted (docs/defect-maps.md)
PREDICTION_COLUMNS = ["path", "score", "predicted_label", "anomaly_score", "anomaly_flag", "accepted_as_valid",
                      "model_score", "defect_map", "defect_map_grid", "error"]


def list_prediction_images(source: dict, demo_images: str | Callable[[], str]) -> pd.DataFrame:
    """One row per file to score: ``path`` and ``error`` ("" or why the file is not scored)."""
    images, skipped = read_unlabelled(source, demo_images)
    table = pd.DataFrame({"path": images + [row["path"] for row in skipped],
                          "error": [""] * len(images) + [row["reason"] for row in skipped]})
    logger.info("Found %d images to score (%d other files listed with an error)", len(images), len(skipped))
    if source.get("kind") != "csv":  # a CSV's own order is kept
        table = table.sort_values("path", ignore_index=True)
    return table.astype({"path": "string", "error": "string"})


def export_onnx_model(model_checkpoint: dict, operating_point: dict, predict: PredictConfig) -> bytes:
    """The checkpoint's whole model (backbone and head) as ONNX, tagged with the checkpoint's hash;
    with the patch vectors as a fourth output when the served score or its map reads them, and the fine
    patch vectors as a fifth when the drawn map reads them (the patch Gaussian's)."""
    checkpoint, point = Checkpoint.from_payload(model_checkpoint), ServedScore.of(operating_point)
    patch_grid, fine = point.pass_grid, _passes_fine(point, predict)
    started = time.perf_counter()
    onnx_model = export_onnx(
        checkpoint.model(), int(checkpoint.input_size),
        {CHECKPOINT_KEY: checkpoint.fingerprint(), "backbone": checkpoint.backbone,
         "outputs": "score: probability of valid; embedding; features: pooled backbone features"
                    + (f"; patches: {patch_grid}x{patch_grid} patch vectors" if patch_grid else "")
                    + ("; fine_patches: fine patch vectors for the defect map" if patch_grid and fine else "")},
        opset=predict.opset, patch_grid=patch_grid, fine=fine,
    )
    logger.info("Exported the model to ONNX (%.1f MB) in %.1f s", len(onnx_model) / 1e6, time.perf_counter() - started)
    return onnx_model


def check_onnx_parity(model_checkpoint: dict, onnx_model: bytes, prediction_images: pd.DataFrame,
                      operating_point: dict, predict: PredictConfig, runtime: RuntimeConfig = RuntimeConfig()) -> dict:
    """Compare the export with PyTorch eager fp32 on the first readable images to be scored: the
    served score (the model's, or the patch classifier's of the patch vectors) must agree within
    ``runtime.parity_tolerance`` (:mod:`~image_classification.runtime.parity`)."""
    checkpoint, point = Checkpoint.from_payload(model_checkpoint), ServedScore.of(operating_point)
    tolerance = RuntimeConfig.from_params(runtime).parity_tolerance
    report = {"images": 0, "max_abs_difference": None, "tolerance": tolerance,
              "checkpoint_sha256": checkpoint.fingerprint(),
              "onnx_checkpoint_sha256": onnx_properties(onnx_model).get(CHECKPOINT_KEY)}
    if report["onnx_checkpoint_sha256"] != report["checkpoint_sha256"]:
        return report | {"passed": False, "reason": "the ONNX model was exported from another checkpoint"}
    if not onnxruntime_available():
        return report | {"passed": False, "reason": "onnxruntime is not installed"}
    mismatch = serving_mismatch(onnx_model, point.pass_grid, _passes_fine(point, predict))
    if mismatch:
        return report | {"passed": False, "reason": f"the ONNX model cannot serve the operating point's "
                         f"{point.candidate} score and map: {mismatch}; run `kedro run --pipelines predict` to export it again"}
    spec = checkpoint.spec
    candidates = prediction_images.loc[prediction_images["error"].fillna("") == "", "path"].tolist()
    images = _first_readable(candidates, spec, predict.parity_images, predict)
    if not len(images):
        return report | {"passed": False, "reason": "no readable image to compare on"}
    def served(outputs: dict[str, np.ndarray]) -> np.ndarray:
        return point.scores(outputs["score"], outputs["features"], torch.from_numpy(outputs["patches"]))

    try:
        measured = export_parity(checkpoint.model(), onnx_model, images, point.pass_grid,
                                 served if point.patch_grid else None)
    except Exception as error:  # onnxruntime raises its own types (an operator its version lacks, a broken file...)
        return report | {"passed": False, "reason": f"ONNX Runtime could not run the exported model ({error}); "
                         "run `kedro run --pipelines predict` to export it again, or use predict.backend torch"}
    differences, passed = measured.max_abs_difference, measured.difference <= tolerance
    logger.info("ONNX vs PyTorch on %d images: max |score difference| %.2e, embedding %.2e, features %.2e (%s)",
                len(images), differences["score"], differences["embedding"], differences["features"],
                "passed" if passed else f"over the tolerance {tolerance:g}")
    return report | {"images": len(images), "max_abs_difference": differences, "passed": bool(passed),
                     "reason": "" if passed else "scores differ from PyTorch by more than the tolerance"}


def predict_images(model_checkpoint: dict, onnx_model: bytes, onnx_parity: dict, anomaly_detector: dict,
                   operating_point: dict, prediction_images: pd.DataFrame, predict: PredictConfig,
                   dask: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Score every listed image: classifier call at the operating threshold, anomaly flag, decision.

    The call is made on the score evaluate chose to serve (``operating_point.json``'s candidate): the
    model's, or the baseline's (its weights are in the operating point) on the pooled features the same
    pass computes.

    In this process, or in partitions on the Dask cluster ``runtime.dask`` names (each worker
    builds the backend once, with ``runtime.dask.threads_per_worker`` threads). ``dask`` is that
    block as ``params:runtime.dask`` gives it (or a ``DaskSettings``), not typed here: Kedro checks it
    as part of the typed ``runtime`` block (:class:`~image_classification.parameters.runtime.RuntimeConfig`)
    and cannot type a block and one of its keys at once.

    Returns:
        One row per listed file (see :data:`PREDICTION_COLUMNS`; ``error`` says why a file has
        no score) and a summary of the run: counts, backend, threshold, detector and speed.
    """
    checkpoint = Checkpoint.from_payload(model_checkpoint)
    detector = DetectorState.from_payload(anomaly_detector).for_checkpoint(checkpoint)
    point = ServedScore.of(operating_point)
    threshold = point.threshold_for(checkpoint)
    readable = prediction_images["error"].fillna("") == ""
    paths, dask = prediction_images.loc[readable, "path"].tolist(), DaskSettings.from_params(dask)
    started = time.perf_counter()
    if dask.enabled and paths:
        with dask_map(dask, "Predicting") as cluster:
            outputs, predict = _scores_on_dask(cluster, paths, checkpoint, model_checkpoint, onnx_model, onnx_parity,
                                               anomaly_detector, point, predict, dask)
    else:
        device = torch_device({"device": predict.device, "threads": predict.threads_for("torch")})
        backend = serving_backend(predict.backend, checkpoint.model(), onnx_model, onnx_parity, device,
                                  predict.threads_for, point.pass_grid, _passes_fine(point, predict))
        outputs = _stream_scores(backend, paths, checkpoint.spec, detector.restore(),
                                 detector.space, point, predict)
    seconds = time.perf_counter() - started
    table = _decide(prediction_images, readable.to_numpy(), outputs, threshold, detector.threshold, point.map_grid)
    summary = _summary(table, outputs["backend"], threshold, detector.describe(), predict, seconds) | {
        "candidate": point.candidate, "defect_maps": _maps_summary(point, predict)}
    if "workers" in outputs:  # scored on Dask
        summary["dask"] = {"address": dask.address, "partition_size": dask.partition_size, "workers": outputs["workers"]}
    logger.info("Scored %d of %d files in %.1f s (%.1f images/s, %s): %d accepted as valid, %d flagged, %d unreadable",
                summary["scored"], summary["images"], seconds, summary["images_per_second"] or 0.0, summary["backend"],
                summary["accepted_as_valid"], summary["anomaly_flagged"], summary["errors"])
    return table, summary


def score_partition(paths: list[str], model: dict, predict: PredictConfig) -> dict:
    """On a Dask worker: score, anomaly score and read error of some images, with the backend this
    worker built for the model (once per worker process)."""
    def build() -> tuple[Backend, Detector, str | None, BackboneSpec, ServedScore]:
        checkpoint, detector = Checkpoint.from_payload(model["checkpoint"]), DetectorState.from_payload(model["detector"])
        device = torch_device({"device": predict.device, "threads": predict.threads_for("torch")})
        point = ServedScore.of(model["operating_point"])
        backend = serving_backend(predict.backend, checkpoint.model(), model["onnx"], model["parity"], device,
                                  predict.threads_for, point.pass_grid, _passes_fine(point, predict))
        return backend, detector.restore(), detector.space, checkpoint.spec, point

    backend, detector, space, spec, point = worker_cached(f"predict-{model['key']}", build)
    return _stream_scores(backend, paths, spec, detector, space, point, predict, progress=False) | {
        "worker": os.getpid()}


def _scores_on_dask(cluster: DaskMap, paths: list[str], checkpoint: Checkpoint, model_checkpoint: dict,
                    onnx_model: bytes, onnx_parity: dict, anomaly_detector: dict, point: ServedScore,
                    predict: PredictConfig, dask: DaskSettings) -> tuple[dict, PredictConfig]:
    """The outputs of :func:`_stream_scores`, computed partition by partition on the cluster and
    written into place as each comes back; with the settings the workers ran."""
    threads = int(dask.threads_per_worker)
    # a Dask worker is a daemon process: it cannot start DataLoader workers, and its cores are its threads
    on_worker = replace(predict, workers=0, threads={"onnxruntime": threads, "torch": threads})
    # what a worker builds once and keeps: this checkpoint, and the served score's weights
    operating_point = point.to_payload()  # its content checksum covers every field a worker builds from
    model = cluster.shared({"key": f"{checkpoint.fingerprint()}-{operating_point[CONTENT_SHA256]}",
                            "checkpoint": model_checkpoint,
                            "onnx": onnx_model, "parity": onnx_parity, "detector": anomaly_detector,
                            "operating_point": operating_point})
    score, anomaly = np.full(len(paths), np.nan, np.float32), np.full(len(paths), np.nan, np.float32)
    served_score = np.full(len(paths), np.nan, np.float32)
    maps = np.full((len(paths), point.map_grid ** 2), np.nan, np.float32) if _draws_maps(point, predict) else None
    errors: list[str] = [""] * len(paths)
    backends, workers = set(), set()
    for start, part in cluster.run(score_partition, paths, model, on_worker):
        stop = start + len(part["error"])
        score[start:stop], anomaly[start:stop], errors[start:stop] = part["score"], part["anomaly_score"], part["error"]
        served_score[start:stop] = part["served_score"]
        if maps is not None:
            maps[start:stop] = part["defect_map"]
        backends.add(part["backend"])
        workers.add(part["worker"])
    return {"score": score, "served_score": served_score, "anomaly_score": anomaly, "error": errors,
            "backend": "+".join(sorted(backends)), "workers": len(workers)} | (
        {"defect_map": maps} if maps is not None else {}), on_worker


def draw_overlays(predictions: pd.DataFrame, predict: PredictConfig) -> dict[str, Callable[[], Image.Image]]:
    """With ``predict.save_overlays``: every image that has a defect map, drawn upright with its map over it
    (:func:`~image_classification.defect_maps.overlay`), longer side at most ``predict.overlay_max_side``.
    One PNG per image, named after its file plus a short hash of its whole path (two ``0001.png`` in
    different folders never collide), each drawn only when the catalog writes it
    (:class:`~image_classification.datasets.ImageFolderDataset`)."""
    if not predict.save_overlays:
        return {}
    drawn = predictions[predictions["defect_map"].notna()]
    overlays = {_overlay_name(path): partial(_draw_overlay, path, np.asarray(values), predict)
                for path, values in zip(drawn["path"], drawn["defect_map"])}
    logger.info("Writing %d defect map overlays to prediction_overlays", len(overlays))
    return overlays


def format_for_spreadsheet(predictions: pd.DataFrame) -> pd.DataFrame:
    """The predictions with blanks instead of missing values and scores rounded to 6 decimals; without
    the defect maps (a list of values per image: they stay in predictions.parquet)."""
    predictions = predictions.drop(columns=["defect_map"], errors="ignore")
    scores = {column: 6 for column in ("score", "anomaly_score", "model_score") if column in predictions}
    table = predictions.astype({column: "float64" for column in scores}).round(scores)
    table = table.astype("object")
    return table.where(predictions.notna(), "")


# ----------------------------------------------------------------------------- helpers


def _first_readable(paths: list[str], spec: BackboneSpec, count: int, predict: PredictConfig) -> torch.Tensor:
    """Up to ``count`` preprocessed images, skipping files that cannot be read."""
    dataset, images = ImageFiles(paths, spec, limits=predict.read_limits), []
    for index in range(len(dataset)):
        image, reason = dataset[index]
        if not reason:
            images.append(image)
        if len(images) == count:
            break
    return torch.stack(images) if images else torch.empty(0, 3, spec.input_size, spec.input_size)


def _stream_scores(backend: Backend, paths: list[str], spec: BackboneSpec, detector: Detector, space: str | None,
                   point: ServedScore, predict: PredictConfig,
                   progress: bool = True) -> dict[str, np.ndarray | list[str] | str]:
    """The model's score, the served score (``point``'s candidate: the model's, the baseline's of
    the pooled features or the patch classifier's of the patch vectors), anomaly score and read
    error per image, batch by batch: features never accumulate."""
    parts: dict[str, list] = {"score": [], "served_score": [], "anomaly_score": [], "error": []}
    if _draws_maps(point, predict):
        parts["defect_map"] = []
    with tqdm(total=len(paths), desc="Predicting", unit="img", leave=False, disable=None if progress else True) as bar:
        for images, reasons in image_loader(paths, spec, predict.batch_size, predict.workers,
                                            limits=predict.read_limits):
            outputs = backend(images)
            inputs = _space_features(outputs, space)
            parts["score"].append(outputs["score"].astype(np.float32))
            parts["served_score"].append(point.scores(outputs["score"], outputs["features"], outputs.get("patches"),
                                                      outputs.get("fine_patches")).astype(np.float32))
            parts["anomaly_score"].append(detector.score_samples(inputs.astype(np.float64)).astype(np.float32))
            if "defect_map" in parts:
                parts["defect_map"].append(point.defect_maps(outputs["score"], outputs.get("patches"),
                                                             outputs.get("fine_patches")))
            parts["error"] += list(reasons)
            bar.update(len(images))
    empty = {"defect_map": np.empty((0, point.map_grid ** 2), np.float32)}
    return {name: np.concatenate(parts[name]) if paths else empty.get(name, np.empty(0, np.float32))
            for name in parts if name != "error"} | {"error": parts["error"], "backend": backend.name}


def _decide(listed: pd.DataFrame, readable: np.ndarray, outputs: dict, threshold: float,
            anomaly_threshold: float, grid: int = 0) -> pd.DataFrame:
    """Per image: valid at the threshold (on the served score), anomalous above the detector's,
    accepted if both say so."""
    table = listed[["path"]].copy()
    errors = listed["error"].to_numpy(dtype=object).copy()
    errors[readable] = outputs["error"]
    ok = np.array([not error for error in errors], dtype=bool)
    score, model_score = np.full(len(table), np.nan, np.float32), np.full(len(table), np.nan, np.float32)
    anomaly = np.full(len(table), np.nan, np.float32)
    model_score[readable], anomaly[readable] = outputs["score"], outputs["anomaly_score"]
    score[readable] = outputs["served_score"]
    score[~ok], model_score[~ok], anomaly[~ok] = np.nan, np.nan, np.nan
    valid, flagged, accepted = decide(score, anomaly, threshold, anomaly_threshold)
    table["score"] = score
    table["predicted_label"] = pd.array(np.where(valid, "valid", "invalid"), dtype="string")
    table.loc[~ok, "predicted_label"] = pd.NA
    table["anomaly_score"] = anomaly
    table["anomaly_flag"] = pd.array(flagged, dtype="boolean")
    table.loc[~ok, "anomaly_flag"] = pd.NA
    table["accepted_as_valid"] = accepted  # False where unreadable: a NaN score is never valid
    table["model_score"] = model_score
    maps = np.full(len(table), None, dtype=object)
    if "defect_map" in outputs:
        for row, values in zip(np.flatnonzero(readable), outputs["defect_map"]):
            maps[row] = values if ok[row] else None
    table["defect_map"] = maps
    table["defect_map_grid"] = pd.array([grid if values is not None else None for values in maps], dtype="Int16")
    table["error"] = pd.array(errors, dtype="string")
    return table[PREDICTION_COLUMNS]


def _overlay_name(path: str) -> str:
    stem = os.path.splitext(path.replace("\\", "/").rsplit("/", 1)[-1])[0]
    return f"{stem}-{hashlib.sha256(path.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _draw_overlay(path: str, values: np.ndarray, predict: PredictConfig) -> Image.Image:
    """One overlay; an image that can no longer be read gets its map over a grey square, with a warning."""
    try:
        image = load_rgb(path, predict.read_limits, draft_size=predict.overlay_max_side)
        image.thumbnail((predict.overlay_max_side, predict.overlay_max_side))
        pixels = np.asarray(image)
    except ImageReadError as error:
        logger.warning("%s: its defect map is drawn on grey, the image cannot be read again: %s", path, error)
        pixels = np.full((256, 256, 3), 128, np.uint8)
    return Image.fromarray(overlay(pixels, values))


def _draws_maps(point: ServedScore, predict: PredictConfig) -> bool:
    return bool(predict.defect_maps and point.map_units)


def _passes_fine(point: ServedScore, predict: PredictConfig) -> bool:
    """Whether the export, its parity check and the backends output the fine patch vectors: only
    when the map predict draws reads them."""
    return point.pass_fine(_draws_maps(point, predict))


def _maps_summary(point: ServedScore, predict: PredictConfig) -> dict:
    """What the defect map columns hold, or why they are empty."""
    if not point.map_units:
        return {"written": False, "reason": f"the served {point.candidate.replace('_', ' ')} reads no patches and no "
                "patch score was fitted beside it (evaluate.patch_classifier, train.patch_grid)"}
    if not predict.defect_maps:
        return {"written": False, "reason": "predict.defect_maps is off"}
    return {"written": True, "source": point.map_source, "grid": point.map_grid, "units": point.map_units,
            "layout": "row-major from the top-left of the upright image, higher = more defective",
            "bytes_per_image": 4 * point.map_grid ** 2, "overlays": predict.save_overlays}


def _summary(table: pd.DataFrame, backend: str, threshold: float, detector: dict, predict: PredictConfig,
             seconds: float) -> dict:
    scored = int((table["error"] == "").sum())
    return {
        "images": len(table), "scored": scored, "errors": len(table) - scored,
        "called_valid": int((table["predicted_label"] == "valid").sum()),
        "anomaly_flagged": int(table["anomaly_flag"].sum()), "accepted_as_valid": int(table["accepted_as_valid"].sum()),
        "threshold": threshold, "decision": "accepted as valid when score (the served candidate's) >= threshold and "
                                            "the anomaly score "
                                            "is not above the detector's threshold",
        "anomaly_detector": detector,
        "backend": backend, "batch_size": predict.batch_size, "workers": predict.workers,
        "threads": predict.threads_for(backend), "seconds": round(seconds, 3),
        "images_per_second": round(scored / seconds, 2) if seconds > 0 else None,
    }
