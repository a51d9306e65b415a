"""Nodes of the evaluate pipeline: every registered candidate score fitted on train and scored on
validation and test (:mod:`image_classification.scorers`), the served one and its threshold chosen
(:mod:`image_classification.selection`), measured on test, and the tables and figures that show what
goes wrong. The nodes orchestrate; the scores, the choice and the measures live in those packages."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure

from image_classification.artefacts import Checkpoint, FeatureCache, ScoredIndex
from image_classification.operating_point import OperatingPoint
from image_classification.images import thumbnail
from image_classification.metrics import format_figure, format_threshold
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.train import TrainConfig
from image_classification.patches import grid_of
from image_classification.plots import defect_maps as map_plots
from image_classification.plots import evaluation as plots
from image_classification.plots.style import file_caption
from image_classification.scorers import SCORERS, Features, Labelled, ServedScore, Split, columns
from image_classification.selection import cross_validation, operating_point, report
from image_classification.selection.candidate import scored

logger = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")
THUMBNAIL_SIZE = 160
GALLERY_SIZE = 224  # the defect map gallery's images, each drawn twice


# ---------------------------------------------------------------- scores


def score_images(scored_index: dict, model_checkpoint: dict, image_index: pd.DataFrame) -> pd.DataFrame:
    """The trained model's scores (probability of valid) of the validation and test images, read
    from the score stage's one pass over the index.

    Returns:
        One row per validation and test image: path, split, label, target, score (NaN when the
        image could not be read) and error.
    """
    scored_images = ScoredIndex.from_payload(scored_index).check(image_index, Checkpoint.from_payload(model_checkpoint))
    rows = _evaluated_rows(image_index)
    table = scored_images.table(image_index).iloc[rows].reset_index(drop=True)
    table = table[["path", "split", "label", "target", "score", "error"]].astype({"target": "int8"})
    for split, scores in table.groupby("split")["score"]:
        logger.info("Model scores: %d %s images (%d unreadable, left out of every metric)", len(scores), split,
                    int(scores.isna().sum()))
    return table


def cross_validate_candidates(backbone_features: dict, image_index: pd.DataFrame, train: TrainConfig,
                              evaluate: EvaluateConfig, seed: int) -> tuple[dict, pd.DataFrame, dict]:
    """On a small labelled set, every candidate over ``evaluate.cv_folds`` grouped, stratified folds
    of the train and validation images (:mod:`~image_classification.selection.cross_validation`):
    figures per fold and mean +- sd, so that one small split's luck does not pass for the model's
    quality, and an out-of-fold score of every one of those images, on which the operating point can
    be chosen. The test split stays out, so the test figures remain a measurement of the choice.

    Returns:
        The report (``{"enabled": False, "reason": ...}`` when it is off or the set is large enough
        for one split), per train and validation image its fold and every candidate's held-out
        score (no rows when it did not run), and the fold fits as plain numbers by scorer name
        (``patch_classifier``: the fold fits whose mean evaluate serves; ``fold_stack``; ``{}`` when
        there are none), which :func:`score_candidates` scores with.
    """
    cache = FeatureCache.from_payload(backbone_features).check_index(image_index)
    return cross_validation.run(cache, image_index, train, evaluate, seed)


def score_candidates(model_scores: pd.DataFrame, backbone_features: dict, image_index: pd.DataFrame,
                     evaluate: EvaluateConfig, seed: int, out_of_fold_scores: pd.DataFrame | None = None,
                     fold_models: dict | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Every registered scorer, in order, fitted on the readable labelled train images (choosing on
    validation) and scoring the validation and test images: one fit path for all of them
    (:meth:`~image_classification.scorers.Scorer.on_split`). On small data the patch classifier and
    the fold stack are the cross-validation's fold fits (``fold_models``), their validation scores the
    out-of-fold ones, so that both stay held out.

    Returns:
        ``evaluation_scores``: every candidate's score side by side, one row per validation and test
        image (NaN where unreadable or not scored); per scorer what was fitted or why nothing was
        (``scorer_fits``); and every fitted servable scorer, and the locating one whose map is served
        (``evaluate.defect_map_from``), as plain numbers (``scorer_models``), which the operating point
        carries when it serves one or its map.
    """
    cache = FeatureCache.from_payload(backbone_features).check_index(image_index)
    rows = _evaluated_rows(image_index)
    paths = image_index["path"].to_numpy()
    if model_scores["path"].tolist() != paths[rows].tolist():
        raise ValueError("model_scores are not for the validation and test images of image_index, in order")
    split = _split(model_scores, cache, image_index, rows, out_of_fold_scores, fold_models or {})
    table = model_scores[["path", "split", "label", "target", "score"]].copy()
    positions = {part: np.searchsorted(rows, _rows_of(cache, image_index, part)) for part in EVALUATED_SPLITS}
    fits, models = {}, {}
    for name, kind in SCORERS.items():
        start = time.perf_counter()
        result = kind.on_split(split, evaluate, seed)
        split = split.with_scores(name, result.val, result.test)
        fits[name] = result.record
        if name == "model":
            continue
        # a locating scorer's fit is kept only where its map is served (evaluate.defect_map_from)
        if result.fitted is not None and (kind.servable or evaluate.defect_map_from == name):
            models[name] = result.fitted.to_payload()
        column = np.full(len(rows), np.nan, dtype=np.float32)
        column[positions["val"]], column[positions["test"]] = result.val, result.test
        table[kind.column] = column
        if result.available:
            logger.info("%s: %d validation and %d test images scored in %.1f s", kind.label.capitalize(),
                        len(result.val), len(result.test), time.perf_counter() - start)
        else:
            logger.info("%s not scored: %s", kind.label.capitalize(), result.record["reason"])
    table["error"] = model_scores["error"].to_numpy()
    return table[["path", "split", "label", "target", *columns().values(), "error"]], fits, models


def _rows_of(cache: FeatureCache, image_index: pd.DataFrame, part: str) -> np.ndarray:
    """Positions in the index of the readable images of one split (labelled ones for train and validation)."""
    chosen = cache.readable & (image_index["split"] == part).to_numpy()
    if part != "test":
        chosen &= image_index["target"].notna().to_numpy()
    return np.flatnonzero(chosen)


def _split(model_scores: pd.DataFrame, cache: FeatureCache, image_index: pd.DataFrame, rows: np.ndarray,
           out_of_fold_scores: pd.DataFrame | None, fold_models: dict) -> Split:
    """The index's train, validation and test images as a :class:`~image_classification.scorers.Split`."""
    model = np.full(len(image_index), np.nan)
    model[rows] = model_scores["score"].to_numpy(np.float64)
    features = Features(scores={"model": model}, pooled=cache.pooled.float().numpy(), patches=cache.patches,
                        fine_patches=cache.fine_patches)
    targets = image_index["target"].to_numpy(dtype=float, na_value=np.nan)
    groups = image_index["split_group" if "split_group" in image_index else "path"].to_numpy()
    parts = {part: _rows_of(cache, image_index, part) for part in ("train", "val", "test")}
    labelled = {part: Labelled(features.take(parts[part]), targets[parts[part]].astype(int), groups[parts[part]])
                for part in ("train", "val")}
    out_of_fold = {}
    if out_of_fold_scores is not None and len(out_of_fold_scores):
        held_out = out_of_fold_scores.set_index("path")
        val_paths = image_index["path"].to_numpy()[parts["val"]]
        out_of_fold = {name: held_out[column].reindex(val_paths).to_numpy(np.float32)
                       for name, column in columns().items() if column in held_out}
    return Split(train=labelled["train"], val=labelled["val"], test=features.take(parts["test"]),
                 fold_fits=fold_models if out_of_fold else {}, out_of_fold=out_of_fold, backbone=cache.backbone,
                 grid=grid_of(cache.patches) if cache.patches is not None else 0)


# ---------------------------------------------------------------- operating point and metrics


def choose_operating_point(evaluation_scores: pd.DataFrame, model_checkpoint: dict, evaluate: EvaluateConfig,
                           out_of_fold_scores: pd.DataFrame | None = None, seed: int = 42,
                           scorer_models: dict | None = None) -> dict:
    """Choose the served score (``evaluate.operating_candidate``) and its decision threshold, by the
    configured rule, on validation or on the out-of-fold scores (``evaluate.threshold_on``); see
    :mod:`image_classification.selection.candidate` and :mod:`~image_classification.selection.operating_point`.

    Returns:
        The candidate, the threshold, why and how they were chosen and what the threshold achieves
        where it was chosen, with what of the checkpoint predict, zero_shot and embedding_analysis
        need to apply it to the right model.
    """
    fitted = scorer_models or {}
    served_weights = {"model": None, **{name: fitted.get(name) or None
                                        for name, kind in SCORERS.items() if kind.servable and name != "model"}}
    locating_weights = {name: fitted[name] for name, kind in SCORERS.items() if kind.locates and fitted.get(name)}
    return operating_point.choose(evaluation_scores, Checkpoint.from_payload(model_checkpoint), evaluate,
                                  out_of_fold_scores if out_of_fold_scores is not None else pd.DataFrame(), seed,
                                  served_weights, locating_weights)


def measure_performance(evaluation_scores: pd.DataFrame, operating_point: dict, scorer_fits: dict,
                        evaluate: EvaluateConfig, seed: int) -> dict:
    """Test metrics of every candidate, each at its own threshold chosen on validation, the served one at
    the operating point (:func:`image_classification.selection.report.measure`)."""
    return report.measure(evaluation_scores, operating_point, scorer_fits, evaluate, seed)


def list_errors(evaluation_scores: pd.DataFrame, operating_point: dict) -> pd.DataFrame:
    """Every validation and test image the model gets wrong at the operating point, most wrong first.

    ``margin`` is how far the score lies past the threshold on the wrong side: a false positive
    scored 0.99 at threshold 0.6 is more wrong than one scored 0.61.
    """
    threshold, column = operating_point["threshold"], columns()[_served(operating_point)]
    scored = evaluation_scores.dropna(subset=[column]).assign(score=lambda table: table[column])
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
    """The served score per true class on validation and on test, with the operating threshold drawn."""
    candidate = _served(operating_point)
    panels = {f"{candidate}, {name} split": plots.ScoredSplit(candidate, *scored(evaluation_scores, split,
                                                                                  columns()[candidate]),
                                                              operating_point["threshold"])
              for split, name in (("val", "validation"), ("test", "test"))}
    return plots.score_histogram_plotly(panels), plots.score_histogram_figure(panels)


def plot_confusion_matrices(evaluation_metrics: dict) -> Figure:
    """Test confusion matrices: first the served score's at the served threshold (what a deployment
    decides; the patch classifier or the fold stack as often as the model), then beside it the model
    and the baseline, each at its own threshold chosen on validation."""
    served = evaluation_metrics.get("operating_candidate", "model")
    shown = [served] + [name for name in ("model", "baseline")
                        if name != served and "test" in evaluation_metrics.get(name, {})]
    panels = {}
    for name in shown:
        block = evaluation_metrics[name]
        title = f"served: {name.replace('_', ' ')}" if name == served else name.replace("_", " ")
        panels[f"{title} at threshold {format_threshold(block['threshold'])}\n"
               f"precision {format_figure(block['test']['precision'])}, "
               f"recall {format_figure(block['test']['recall'])}"] = block["test"]
    return plots.confusion_matrix_figure(panels)


def draw_error_gallery(gap_analysis: pd.DataFrame, operating_point: dict, evaluate: EvaluateConfig,
                       backbone_features: dict | None = None, image_index: pd.DataFrame | None = None) -> Figure:
    """Thumbnails of the most wrong false positives and false negatives, with their scores and the
    operating point's defect map over each (read from ``backbone_features``; see :func:`_defect_maps`)."""
    shown = {error: gap_analysis[gap_analysis["error"] == error] for error in ("false_positive", "false_negative")}
    paths = pd.concat([errors.head(evaluate.gallery_size) for errors in shown.values()])["path"]
    maps, note = _defect_maps(paths, operating_point, backbone_features, image_index)
    rows = {}
    for error, title in (("false_positive", "False positives: invalid images called valid"),
                         ("false_negative", "False negatives: valid images missed")):
        errors = shown[error]
        more = "" if len(errors) <= evaluate.gallery_size else f", the {evaluate.gallery_size} most wrong shown"
        rows[f"{title}: {len(errors)}{more}"] = [
            (thumbnail(row.path, THUMBNAIL_SIZE),
             f"{file_caption(row.path)}\n{row.split} split, score {format_threshold(row.score)}",
             maps.get(row.path)) for row in errors.head(evaluate.gallery_size).itertuples()
        ]
    title = (f"Errors of the {_served(operating_point).replace('_', ' ')} at threshold "
             f"{format_threshold(operating_point['threshold'])} "
             "on validation and test, most wrong first")
    return plots.error_gallery_figure(rows, title, note)


def draw_defect_map_gallery(evaluation_scores: pd.DataFrame, operating_point: dict, backbone_features: dict,
                            image_index: pd.DataFrame, evaluate: EvaluateConfig) -> tuple[Figure, go.Figure]:
    """The ``evaluate.gallery_size`` invalid test images the served score is surest of (lowest score), each
    beside its defect map: the map the operating point serves (``evaluate.defect_map_from``: the patch
    Gaussian's beside the served score, or the served score's own; where the served score reads no
    patches, a patch score's that explains it), labelled as such, else a note saying why there is none.

    Returns:
        The gallery (PNG) and the same images with their maps as an interactive heat map for kedro viz.
    """
    column = columns()[_served(operating_point)]
    invalid = evaluation_scores[(evaluation_scores["split"] == "test") & (evaluation_scores["target"] == 0)]
    chosen = invalid.dropna(subset=[column]).sort_values([column, "path"]).head(evaluate.gallery_size)
    maps, note = _defect_maps(chosen["path"], operating_point, backbone_features, image_index)
    panels = [map_plots.MapPanel(row.path, f"score {getattr(row, column):.3f}", thumbnail(row.path, GALLERY_SIZE),
                                 maps.get(row.path)) for row in chosen.itertuples()]
    title = (f"The {len(panels)} invalid test images the {_served(operating_point).replace('_', ' ')} is surest of "
             f"(lowest score){', with their defect maps' if maps else ''}")
    return map_plots.defect_map_gallery_figure(panels, title, note), map_plots.defect_map_plotly(panels, title, note)


# ---------------------------------------------------------------- helpers


def _evaluated_rows(image_index: pd.DataFrame) -> np.ndarray:
    """Positions of the validation and test images in the index."""
    return np.flatnonzero(image_index["split"].isin(EVALUATED_SPLITS).to_numpy(dtype=bool))


def _defect_maps(paths: pd.Series, operating_point: dict, backbone_features: dict | None,
                 image_index: pd.DataFrame | None) -> tuple[dict, str]:
    """The defect map of each of ``paths`` (indexed images) by path, and a line saying whose maps they are
    or why there are none: the served score's, or that of the patch score the operating point carries
    beside it (:attr:`ServedScore.map_source`), said to be not the served score's."""
    served = ServedScore.of(operating_point)
    name = served.candidate.replace("_", " ")
    if not served.map_units:
        return {}, (f"The served score (the {name}) reads no patches and no patch score was fitted beside it: no "
                    "defect map")
    if served.map_role == "own":
        note = f"Defect maps of the served {name} ({served.map_units})"
    elif served.map_role == "beside":
        note = (f"The {served.map_scorer.label}'s map, which locates defects beside the served {name} (it decides "
                f"nothing; evaluate.defect_map_from), in {served.map_units}")
    else:
        note = (f"The {served.map_scorer.label}'s map (not the served score's: the {name} reads no patches), in "
                f"{served.map_units}")
    if backbone_features is None or image_index is None:
        return {}, "No feature cache was given: no defect map"
    rows = pd.Index(image_index["path"]).get_indexer(paths)
    known = paths[rows >= 0].tolist()
    maps = served.defect_maps_of_index(image_index, backbone_features, rows[rows >= 0])
    return dict(zip(known, maps)), note


def _served(operating_point: dict) -> str:
    """The candidate whose score the operating point's threshold applies to."""
    return OperatingPoint.from_payload(operating_point).candidate


def _test_series(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> list[plots.ScoredSplit]:
    return [plots.ScoredSplit(*series) for series in report.test_series(evaluation_scores, evaluation_metrics)]
