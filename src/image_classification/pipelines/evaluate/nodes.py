"""Nodes of the evaluate pipeline: an operating point chosen on validation, measured on test
beside a logistic-regression baseline, and the tables and figures that show what goes wrong."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure

from image_classification.artefacts import (
    Checkpoint,
    FeatureCache,
    OperatingPoint,
    ScoredIndex,
    jsonable,
)
from image_classification.baseline import LogisticBaseline
from image_classification.errors import DataError
from image_classification.images import thumbnail
from image_classification.metrics import report_at_threshold, select_threshold
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.plots import evaluation as plots

logger = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")
SCORE_COLUMNS = ["path", "split", "label", "target", "score", "baseline_score", "error"]
THUMBNAIL_SIZE = 160


# ---------------------------------------------------------------- scores


def score_images(scored_index: dict, model_checkpoint: dict, image_index: pd.DataFrame) -> pd.DataFrame:
    """The trained model's scores (probability of valid) of the validation and test images, read
    from the score stage's one pass over the index.

    Returns:
        One row per validation and test image: path, split, label, target, score (NaN when the
        image could not be read) and error.
    """
    scored = ScoredIndex.from_payload(scored_index).check(image_index, Checkpoint.from_payload(model_checkpoint))
    rows = _evaluated_rows(image_index)
    table = scored.table(image_index).iloc[rows].reset_index(drop=True)
    table = table[["path", "split", "label", "target", "score", "error"]].astype({"target": "int8"})
    for split, scores in table.groupby("split")["score"]:
        logger.info("Model scores: %d %s images (%d unreadable, left out of every metric)", len(scores), split,
                    int(scores.isna().sum()))
    return table


def fit_baseline(backbone_features: dict, image_index: pd.DataFrame, evaluate: EvaluateConfig,
                 seed: int) -> tuple[pd.DataFrame, dict]:
    """Fit a logistic regression on the frozen backbone's pooled features of the train split,
    with C chosen on validation, and score the validation and test images with it.

    Returns:
        ``path`` and ``baseline_score`` per validation and test image (rows as in
        :func:`score_images`), and what was fitted: C and the validation score of every C tried.
    """
    cache = FeatureCache.from_payload(backbone_features)
    cache.check(image_index, cache.backbone, cache.head_input_mode)
    rows = _evaluated_rows(image_index)
    features, readable = cache.pooled.float().numpy(), cache.readable
    split, targets = image_index["split"].to_numpy(), image_index["target"].to_numpy(dtype=float, na_value=np.nan)
    train, val = (np.flatnonzero(readable & (split == name)) for name in ("train", "val"))
    baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, seed).fit(
        features[train], targets[train], features[val], targets[val])
    scores = np.where(readable[rows], baseline.score_samples(features[rows]), np.nan).astype(np.float32)
    logger.info("Baseline: logistic regression on %d train images' pooled %s features, C=%g chosen on validation "
                "(recall at target precision %.3f, average precision %.3f)", len(train), cache.backbone, baseline.c_,
                *baseline.quality_[baseline.c_])
    return (pd.DataFrame({"path": image_index["path"].to_numpy()[rows], "baseline_score": scores}),
            baseline.summary(cache.backbone, len(train)))


def join_scores(model_scores: pd.DataFrame, baseline_scores: pd.DataFrame) -> pd.DataFrame:
    """The model's and the baseline's scores side by side, one row per validation and test image."""
    if model_scores["path"].tolist() != baseline_scores["path"].tolist():
        raise ValueError("model and baseline scores are not for the same images in the same order")
    return model_scores.assign(baseline_score=baseline_scores["baseline_score"].to_numpy())[SCORE_COLUMNS]


# ---------------------------------------------------------------- operating point and metrics


def choose_operating_point(evaluation_scores: pd.DataFrame, model_checkpoint: dict, evaluate: EvaluateConfig) -> dict:
    """Choose the model's decision threshold on the validation split, by the configured rule.

    Returns:
        The threshold, how it was chosen and what it achieves on validation, with what of the
        checkpoint ``predict`` and ``zero_shot`` need to apply it to the right model.
    """
    point = select_threshold(*_scored(evaluation_scores, "val", "score"), evaluate.rule, evaluate.rule_settings)
    _log_operating_point("Model", point)
    return jsonable(OperatingPoint.for_checkpoint(point, Checkpoint.from_payload(model_checkpoint)).to_payload())


def measure_performance(evaluation_scores: pd.DataFrame, operating_point: dict, baseline_fit: dict,
                        evaluate: EvaluateConfig, seed: int) -> dict:
    """Test metrics at the thresholds chosen on validation: the model, and the baseline beside it.

    The baseline's threshold is chosen by the same rule on its own validation scores.
    """
    baseline_point = select_threshold(*_scored(evaluation_scores, "val", "baseline_score"), evaluate.rule,
                                      evaluate.rule_settings)
    _log_operating_point("Baseline", baseline_point)
    metrics = {
        "split": "test", "target_precision": evaluate.target_precision, "rule": evaluate.rule,
        "model": _test_report(evaluation_scores, "score", operating_point, evaluate, seed),
        "baseline": {**baseline_fit, **_test_report(evaluation_scores, "baseline_score", baseline_point, evaluate, seed)},
    }
    for name in ("model", "baseline"):
        _log_test_report(name, metrics[name], evaluate.target_precision)
    return jsonable(metrics)


def list_errors(evaluation_scores: pd.DataFrame, operating_point: dict) -> pd.DataFrame:
    """Every validation and test image the model gets wrong at the operating point, most wrong first.

    ``margin`` is how far the score lies past the threshold on the wrong side: a false positive
    scored 0.99 at threshold 0.6 is more wrong than one scored 0.61.
    """
    threshold = operating_point["threshold"]
    scored = evaluation_scores.dropna(subset=["score"])
    called_valid = (scored["score"] >= threshold).to_numpy()
    wrong = called_valid != (scored["target"] == 1).to_numpy()
    errors = scored.loc[wrong, ["split", "path", "label", "score"]].assign(
        predicted=np.where(called_valid[wrong], "valid", "invalid"),
        error=np.where(called_valid[wrong], "false_positive", "false_negative"),
        threshold=threshold, margin=lambda table: (table["score"] - threshold).abs(),
    )
    logger.info("Gap analysis: %d false positives and %d false negatives on validation and test",
                int(called_valid[wrong].sum()), int((~called_valid[wrong]).sum()))
    return errors.sort_values(["margin", "path"], ascending=[False, True], ignore_index=True)


# ---------------------------------------------------------------- figures


def plot_precision_recall(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> tuple[go.Figure, Figure]:
    """Test precision-recall curves of the model and the baseline, operating points and target marked."""
    series, target = _test_series(evaluation_scores, evaluation_metrics), evaluation_metrics["target_precision"]
    return plots.precision_recall_plotly(series, target), plots.precision_recall_figure(series, target)


def plot_roc(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> tuple[go.Figure, Figure]:
    """Test ROC curves of the model and the baseline, operating points marked."""
    series = _test_series(evaluation_scores, evaluation_metrics)
    return plots.roc_plotly(series), plots.roc_figure(series)


def plot_score_histograms(evaluation_scores: pd.DataFrame, operating_point: dict) -> tuple[go.Figure, Figure]:
    """The model's scores per true class on validation and on test, with the threshold drawn."""
    panels = {f"model, {name} split": plots.ScoredSplit("model", *_scored(evaluation_scores, split, "score"),
                                                        operating_point["threshold"])
              for split, name in (("val", "validation"), ("test", "test"))}
    return plots.score_histogram_plotly(panels), plots.score_histogram_figure(panels)


def plot_confusion_matrices(evaluation_metrics: dict) -> Figure:
    """Test confusion matrices of the model and the baseline at their thresholds."""
    panels = {
        f"{name} at threshold {block['threshold']:.3f}\nprecision {_format(block['test']['precision'])}, "
        f"recall {_format(block['test']['recall'])}": block["test"]
        for name, block in (("model", evaluation_metrics["model"]), ("baseline", evaluation_metrics["baseline"]))
    }
    return plots.confusion_matrix_figure(panels)


def draw_error_gallery(gap_analysis: pd.DataFrame, operating_point: dict, evaluate: EvaluateConfig) -> Figure:
    """Thumbnails of the most wrong false positives and false negatives, with their scores."""
    rows = {}
    for error, title in (("false_positive", "False positives: invalid images called valid"),
                         ("false_negative", "False negatives: valid images missed")):
        errors = gap_analysis[gap_analysis["error"] == error]
        shown = "" if len(errors) <= evaluate.gallery_size else f", the {evaluate.gallery_size} most wrong shown"
        rows[f"{title}: {len(errors)}{shown}"] = [
            (thumbnail(row.path, THUMBNAIL_SIZE), f"{row.path.rsplit('/', 1)[-1][:22]}\n{row.split} split, score {row.score:.3f}")
            for row in errors.head(evaluate.gallery_size).itertuples()
        ]
    title = f"Model errors at threshold {operating_point['threshold']:.3f} on validation and test, most wrong first"
    return plots.error_gallery_figure(rows, title)


# ---------------------------------------------------------------- helpers


def _evaluated_rows(image_index: pd.DataFrame) -> np.ndarray:
    """Positions of the validation and test images in the index."""
    return np.flatnonzero(image_index["split"].isin(EVALUATED_SPLITS).to_numpy(dtype=bool))


def _scored(evaluation_scores: pd.DataFrame, split: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets and scores of one split's readable images."""
    rows = evaluation_scores[(evaluation_scores["split"] == split) & evaluation_scores[column].notna()]
    return rows["target"].to_numpy(dtype=int), rows[column].to_numpy(dtype=np.float64)


def _test_report(evaluation_scores: pd.DataFrame, column: str, point: dict, config: EvaluateConfig, seed: int) -> dict:
    """One classifier's test metrics at its threshold, intervals, and the oracle for comparison."""
    targets, scores = _scored(evaluation_scores, "test", column)
    if not len(targets):
        raise DataError("the test split has no readable image to measure on; give it a share in "
                        "data_prep.split and rerun data_prep and train")
    report = report_at_threshold(targets, scores, point["threshold"], config.target_precision,
                                 config.bootstrap_samples, config.bootstrap_level, seed)
    return {
        "threshold": point["threshold"],
        "chosen_on_validation": {key: point[key] for key in ("rule", "reached", "fallback", "validation")},
        **report,
        "unscored_test_images": int(((evaluation_scores["split"] == "test") & evaluation_scores[column].isna()).sum()),
    }


def _test_series(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> list[plots.ScoredSplit]:
    baseline = "baseline (logistic regression)"
    return [plots.ScoredSplit(name, *_scored(evaluation_scores, "test", column), evaluation_metrics[key]["threshold"])
            for key, column, name in (("model", "score", "model"), ("baseline", "baseline_score", baseline))]


def _log_operating_point(name: str, point: dict) -> None:
    validation = point["validation"]
    logger.info("%s operating point (rule %s): threshold %.4f; validation precision %.3f (%.0f%% %s lower bound %.3f), "
                "recall %.3f on %d images", name, point["rule"], point["threshold"], validation["precision"],
                100 * validation["bound_level"], validation["bound_method"], validation["precision_lower_bound"],
                validation["recall"], validation["images"])
    if not point["reached"]:
        logger.warning("%s: target precision %.2f NOT reached on validation. %s", name, point["target_precision"],
                       point["fallback"])


def _log_test_report(name: str, report: dict, target: float) -> None:
    test, bootstrap = report["test"], report["test_bootstrap"]
    oracle = report["oracle_picked_on_test"]["recall_at_target_precision"]
    logger.info("Test, %s at threshold %.4f: recall %s [%s-%s], precision %s [%s-%s] (%.0f%% bootstrap), target "
                "precision %.2f %s; AUROC %s, AP %s; oracle recall (threshold picked on test) %s", name,
                report["threshold"], _format(test["recall"]), *map(_format, bootstrap["recall"]),
                _format(test["precision"]), *map(_format, bootstrap["precision"]), 100 * bootstrap["level"], target,
                "held" if test["target_precision_held"] else "NOT held", _format(test["auroc"]),
                _format(test["average_precision"]), _format(oracle))


def _format(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


