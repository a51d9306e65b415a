"""Nodes of the zero_shot pipeline: flag images unlike anything the model was trained on."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure

from image_classification.artefacts import Checkpoint, ScoredIndex
from image_classification.detectors import (
    DetectorState,
    build_detector,
    calibrate_threshold,
    decide,
    open_world_precision,
    separation_metrics,
)
from image_classification.errors import DataError
from image_classification.metrics import format_threshold
from image_classification.parameters.zero_shot import ZeroShotConfig
from image_classification.scorers import ServedScore
from image_classification.sources import fine_classes
from image_classification.plots import zero_shot as zero_shot_plots

logger = logging.getLogger(__name__)


MIN_CALIBRATION_IMAGES = 20
"""Fewer accepted valid validation images than this and thresholds are set on all validation images."""


def score_anomalies(scored_index: dict, model_checkpoint: dict, image_index: pd.DataFrame, config: ZeroShotConfig,
                    seed: int, operating_point: dict, backbone_features: dict | None = None,
                    ) -> tuple[pd.DataFrame, dict, dict]:
    """Fit every detector on the training images, score the rest, calibrate on validation.

    Reads the score stage's one pass over the index (score, embedding and pooled features of
    every image, unseen kinds included); unreadable images are left out.

    Returns:
        The validation, test and unseen images with ``score`` (the probability of valid of the
        candidate evaluate serves: the model's, the baseline's on the pooled features or the patch
        classifier's on the patch vectors of ``backbone_features``),
        ``model_score`` (the model's) and one anomaly-score column per detector;
        per detector the threshold that keeps ``target_tpr`` of the validation images
        ``calibrate_on`` names (by default the valid ones the classifier accepts); and the
        fitted flag detector with its threshold, for ``predict``.
    """
    scored = ScoredIndex.from_payload(scored_index).check(image_index, Checkpoint.from_payload(model_checkpoint))
    readable = np.array([not error for error in scored.errors], dtype=bool)
    _log_unreadable(image_index, scored.errors)
    split = image_index["split"].to_numpy(dtype=str)
    train, rest = np.flatnonzero(readable & (split == "train")), np.flatnonzero(readable & (split != "train"))
    table = image_index.iloc[rest][["path", "split", "label", "kind", "target"]].reset_index(drop=True)
    point = ServedScore.of(operating_point)
    served = point.scores_of_index(scored, image_index, backbone_features)
    table["score"], table["model_score"] = np.asarray(served, np.float64)[rest], scored.score[rest]
    validation = (table["split"] == "val").to_numpy()
    if not validation.any():
        raise DataError("zero_shot needs validation images to calibrate its thresholds; none were found")
    calibration, population = calibration_images(table, point, config)
    if population != config.calibrate_on:
        logger.warning("Only %d valid validation images are accepted by the classifier (threshold %s), fewer than "
                       "%d: the flag thresholds keep %.0f%% of all %d validation images instead. More validation "
                       "images (data_prep.split) give the calibration zero_shot.calibrate_on asks for.",
                       _accepted_valid(table, point).sum(), format_threshold(point.threshold), MIN_CALIBRATION_IMAGES,
                       100 * config.target_tpr, calibration.sum())
    logger.info("Flag thresholds keep %.0f%% of %d validation images (%s)", 100 * config.target_tpr,
                calibration.sum(), population)
    names, codes = fine_classes(image_index, train) if config.class_conditional else ([], None)
    # class-aware detectors group the training images by their finer class when there is one
    targets = codes if names else image_index["target"].to_numpy(dtype=float, na_value=np.nan)[train].astype(int)
    thresholds, flag_state = {}, None
    spaces = {space or "score": scored.space(space or "score") for _, _, space in config.detector_runs}
    settings = config.detector_settings(seed)
    settings = replace(settings, fused_widths=tuple(spaces[part or "score"].shape[1] for _, part in settings.fused))
    for name, detector_name, space in config.detector_runs:
        features = spaces[space or "score"]
        detector = build_detector(detector_name, settings).fit(features[train], targets)
        detector.standardise(features[rest[validation]])
        table[name] = detector.score_samples(features[rest])
        thresholds[name] = calibrate_threshold(table.loc[calibration, name].to_numpy(), config.target_tpr)
        if name == config.flag_detector:
            flag_state = DetectorState.of(detector, name, space, thresholds[name], config.target_tpr,
                                          population, scored.checkpoint).to_payload()
    logger.info("Fitted %d detectors on %d training images", len(thresholds), len(train))
    return table, thresholds, flag_state


def calibration_images(table: pd.DataFrame, point: ServedScore, config: ZeroShotConfig) -> tuple[np.ndarray, str]:
    """The rows of ``table`` the flag thresholds are set on, and which population they are.

    ``accepted_valid``: validation images labelled valid whose served score reaches the operating
    threshold. Those are the images the flag can cost (an invalid or rejected image is not accepted
    either way), so ``target_tpr`` becomes the share of accepted valid images the flag keeps. With
    fewer than :data:`MIN_CALIBRATION_IMAGES` of them, all validation images.
    """
    accepted_valid = _accepted_valid(table, point)
    if config.calibrate_on == "accepted_valid" and accepted_valid.sum() >= MIN_CALIBRATION_IMAGES:
        return accepted_valid, "accepted_valid"
    return (table["split"] == "val").to_numpy(), "validation"


def _accepted_valid(table: pd.DataFrame, point: ServedScore) -> np.ndarray:
    """Validation images labelled valid whose served score reaches the operating threshold."""
    valid = table["target"].to_numpy(dtype=float, na_value=np.nan) == 1
    return (table["split"] == "val").to_numpy() & valid & (table["score"].to_numpy(dtype=float) >= point.threshold)


def _log_unreadable(image_index: pd.DataFrame, errors: list[str]) -> None:
    unreadable = [(path, error) for path, error in zip(image_index["path"], errors) if error]
    if unreadable:
        logger.warning("Leaving out %d images that could not be read", len(unreadable))
        for path, error in unreadable[:20]:
            logger.warning("Skipping %s: %s", path, error)


def decide_images(anomaly_scores: pd.DataFrame, thresholds: dict, operating_point: dict, config: ZeroShotConfig) -> pd.DataFrame:
    """One row per test or unseen image: classifier call, anomaly flag and the final decision.

    An image is accepted as valid only if the classifier calls it valid (score at or above the
    operating threshold chosen by evaluate) and the flag detector does not call it anomalous.
    """
    table = anomaly_scores[anomaly_scores["split"].isin(["test", "unseen"])].reset_index(drop=True).copy()
    point = ServedScore.of(operating_point)
    _, flagged, accepted = decide(table["score"].to_numpy(), table[config.flag_detector].to_numpy(),
                                  point.threshold, thresholds[config.flag_detector])
    table["predicted_label"] = point.predicted_labels(table["score"].to_numpy())
    table["anomaly_score"] = table[config.flag_detector]
    table["anomaly_flag"] = flagged
    table["accepted_as_valid"] = accepted
    table["kind"] = table["kind"].where(table["split"] == "unseen", "in-distribution (" + table["label"].astype(str) + ")")
    return table


def measure_detectors(anomaly_scores: pd.DataFrame, decisions: pd.DataFrame, thresholds: dict,
                      operating_point: dict, config: ZeroShotConfig) -> dict:
    """AUROC, AUPR and FPR@95 per detector against all unseen images and each kind; flag and
    acceptance rates per kind; and what the combined decision costs on valid test images."""
    test = anomaly_scores[anomaly_scores["split"] == "test"]
    unseen = anomaly_scores[anomaly_scores["split"] == "unseen"]
    if unseen.empty:
        logger.warning("No unseen-kind images: the detectors are fitted and calibrated (predict flags with %s), "
                       "but how well they separate unseen kinds cannot be measured. Give data_prep a "
                       "zero_shot_root, zero_shot_csv or unseen classes to measure it.", config.flag_detector)
    detectors = {}
    for name in config.detector_names:
        block = {"all_unseen": separation_metrics(test[name].to_numpy(), unseen[name].to_numpy()) if len(unseen) else None,
                 "threshold": thresholds[name], "per_kind": {}}
        for kind, group in unseen.groupby("kind"):
            block["per_kind"][kind] = separation_metrics(test[name].to_numpy(), group[name].to_numpy()) | {
                "flag_rate": float(np.mean(group[name] > thresholds[name]))}
        detectors[name] = block
    per_kind = decisions.groupby("kind").agg(
        images=("path", "size"), flagged=("anomaly_flag", "mean"),
        accepted_by_classifier=("predicted_label", lambda s: float(np.mean(s == "valid"))),
        accepted_combined=("accepted_as_valid", "mean"),
    )
    valid_test = decisions[(decisions["split"] == "test") & (decisions["label"] == "valid")]
    kept_by_classifier = valid_test["predicted_label"] == "valid"
    lost = float((kept_by_classifier & valid_test["anomaly_flag"]).sum() / max(kept_by_classifier.sum(), 1))
    precision = _precisions(decisions, config.unseen_share)
    point = ServedScore.of(operating_point)
    calibration, population = calibration_images(anomaly_scores, point, config)
    metrics = {
        "flag_detector": config.flag_detector, "target_tpr": config.target_tpr,
        "calibrated_on": population, "calibration_images": int(calibration.sum()),
        "classifier": point.candidate, "classifier_threshold": point.threshold,
        "detectors": detectors,
        "decision_per_kind": {k: {c: float(v) for c, v in row.items()} for k, row in per_kind.iterrows()},
        "valid_test_images_lost_by_combined_decision": lost,
        "unseen_share": config.unseen_share, "precision": precision,
    }
    flag = detectors[config.flag_detector]["all_unseen"]
    if flag is not None:
        logger.info("Zero-shot (%s): AUROC %.3f, FPR@95 %.3f", config.flag_detector, flag["auroc"], flag["fpr_at_95_tpr"])
    logger.info("Valid test images lost by the combined decision: %.1f%%", 100 * lost)
    if precision["open_world_combined"] is not None:
        logger.info("Precision of what is accepted as valid: closed set %.3f; with %.0f%% unseen kinds %.3f "
                    "(classifier alone %.3f)", precision["closed_set_combined"], 100 * config.unseen_share,
                    precision["open_world_combined"], precision["open_world_classifier"])
    for kind, row in per_kind.iterrows():
        logger.info("  %-28s accepted as valid: classifier alone %.1f%%, combined %.1f%%",
                    kind, 100 * row["accepted_by_classifier"], 100 * row["accepted_combined"])
    return metrics


def _precisions(decisions: pd.DataFrame, unseen_share: float) -> dict[str, float | None]:
    """Closed-set precision (test images only) and open-world precision (with unseen kinds at
    ``unseen_share``), for the classifier alone and for the combined decision; open-world figures
    are None without unseen-kind images."""
    accepted = {"classifier": (decisions["predicted_label"] == "valid").to_numpy(),
                "combined": decisions["accepted_as_valid"].to_numpy(bool)}
    test, unseen = (decisions["split"] == "test").to_numpy(), (decisions["split"] == "unseen").to_numpy()
    valid = (decisions["label"] == "valid").to_numpy()[test]
    kinds = decisions["kind"].to_numpy()
    figures: dict[str, float | None] = {}
    for name, called in accepted.items():
        by_kind = {kind: called[unseen & (kinds == kind)] for kind in np.unique(kinds[unseen])}
        figures[f"closed_set_{name}"] = _none_if_nan(open_world_precision(called[test], valid, {}, 0.0))
        figures[f"open_world_{name}"] = _none_if_nan(
            open_world_precision(called[test], valid, by_kind, unseen_share)) if by_kind else None
    return figures


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _projection(pca_projection: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """The decided images in embedding_analysis's principal coordinates (PCA fitted on training
    images), so that both stages draw the same space."""
    coordinates = pca_projection[["path", "pc1", "pc2", "pc3"]]
    points = decisions.merge(coordinates, on="path", how="left", validate="one_to_one")
    if points[["pc1", "pc2", "pc3"]].isna().any(axis=None):
        raise DataError("pca_projection does not cover every test and unseen image; rerun "
                        "`kedro run --pipelines embedding_analysis,zero_shot`")
    return points


def plot_embedding_overlay(pca_projection: pd.DataFrame, decisions: pd.DataFrame) -> tuple[Figure, go.Figure]:
    """Where unseen kinds fall in the embedding space, next to the test images (2D PNG and 3D)."""
    points = _projection(pca_projection, decisions)
    return zero_shot_plots.embedding_overlay_figure(points), zero_shot_plots.embedding_overlay_plotly(points)


def plot_anomaly_scores(decisions: pd.DataFrame, zero_shot_metrics: dict) -> Figure:
    """The flag detector's score per kind, with the calibrated threshold."""
    scores = {kind: group["anomaly_score"].to_numpy() for kind, group in decisions.groupby("kind")}
    flag = zero_shot_metrics["flag_detector"]
    return zero_shot_plots.anomaly_score_figure(scores, zero_shot_metrics["detectors"][flag]["threshold"], flag,
                                                zero_shot_metrics["target_tpr"],
                                                zero_shot_metrics["calibrated_on"])


def plot_detector_comparison(zero_shot_metrics: dict) -> Figure:
    """AUROC of every detector and feature space, against all unseen images and per kind."""
    detectors = zero_shot_metrics["detectors"]
    overall = {name: None if block["all_unseen"] is None else block["all_unseen"]["auroc"]
               for name, block in detectors.items()}
    per_kind = {}
    for name, block in detectors.items():
        for kind, metrics in block["per_kind"].items():
            per_kind.setdefault(kind, {})[name] = metrics["auroc"]
    return zero_shot_plots.detector_comparison_figure(overall, per_kind)
