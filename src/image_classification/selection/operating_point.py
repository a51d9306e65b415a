"""The operating point: the served candidate's threshold, chosen by the configured rule on validation or
on out-of-fold scores (``evaluate.threshold_on``), with one warning when it keeps little of the recall
its own images allow, naming the likelier cause."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from image_classification.artefacts import Checkpoint, jsonable
from image_classification.operating_point import OperatingPoint
from image_classification.metrics import format_figure, format_threshold, metrics_at_threshold, select_threshold
from image_classification.scorers import SCORERS, columns, probability_logit
from image_classification.scorers.fold_stack import platt
from image_classification.selection.candidate import operating_candidate, scored

logger = logging.getLogger(__name__)

LOW_EFFICIENCY = 0.8
POOLING_LOSS = 0.01  # AUROC lost by pooling fold scores on their own scales: enough to blame the scales


def choose(evaluation_scores: pd.DataFrame, checkpoint: Checkpoint, evaluate, out_of_fold_scores: pd.DataFrame,
           seed: int, served_weights: dict[str, dict | None], locating_weights: dict[str, dict] | None = None) -> dict:
    """The served candidate (:func:`~image_classification.selection.candidate.operating_candidate`) and
    its threshold, chosen on validation or on out-of-fold scores: with ``threshold_on`` auto the
    fold-fitted candidates' on their out-of-fold scores, five times as many images as validation
    (docs/decisions/0018 and 0032 measure what that buys), the model's on validation. Returns the
    operating point's payload, with the defect map served beside the served score
    (:func:`defect_map_beside`) where ``evaluate.defect_map_from`` names a fitted locating score."""
    candidate, why, compared = operating_candidate(evaluation_scores, out_of_fold_scores, checkpoint, evaluate, seed,
                                                   served_weights)
    column = columns()[candidate]
    chosen_on = evaluate.threshold_on if evaluate.threshold_on != "auto" else \
        "validation" if candidate == "model" else "out_of_fold"
    held_out = out_of_fold_scores[out_of_fold_scores[column].notna()] if len(out_of_fold_scores) else out_of_fold_scores
    note = None
    if chosen_on == "out_of_fold" and held_out.empty:
        note = ("no out-of-fold scores (cross-validation did not run; cross_validation.json says why), so the "
                "threshold was chosen on validation")
        logger.info("Operating point: %s", note)
        chosen_on = "validation"
    if chosen_on == "out_of_fold":
        point = select_threshold(held_out["target"].to_numpy(int), held_out[column].to_numpy(np.float64), evaluate.rule,
                                 replace(evaluate.rule_settings, chosen_on="out-of-fold",
                                         bound_level=evaluate.out_of_fold_bound_level))
        where = (f"out-of-fold scores of {len(held_out)} train and validation images over "
                 f"{held_out['fold'].nunique()} grouped folds")
    else:
        point = select_threshold(*scored(evaluation_scores, "val", column), evaluate.rule, evaluate.rule_settings)
        where = "the validation split"
    point |= {"threshold_chosen_on": chosen_on, "threshold_chosen_on_images": where, "why": why,
              "candidates_compared": compared, "threshold_note": note}
    logger.info("Operating point: the %s's score (%s); threshold chosen on %s", candidate, why, where)
    log_operating_point(candidate.capitalize(), point)
    warn_low_efficiency(point, pooling_loss(held_out, column) if chosen_on == "out_of_fold" else 0.0,
                        "out_of_fold_bound_level" if chosen_on == "out_of_fold" else "bound_level")
    beside = defect_map_beside(evaluate.defect_map_from, locating_weights or {}) or \
        explaining_map(candidate, served_weights)
    return jsonable(OperatingPoint.for_checkpoint(point, checkpoint, candidate, served_weights[candidate],
                                                  beside).to_payload())


def defect_map_beside(source: str, locating_weights: dict[str, dict]) -> dict | None:
    """The locating score ``evaluate.defect_map_from`` names, fitted, as the operating point's defect map
    (``{"candidate", "weights"}``); None for ``served``, or (logged) when it was not fitted."""
    if source == "served":
        return None
    if not locating_weights.get(source):
        logger.info("Defect maps: evaluate.defect_map_from is %s, which was not fitted (see evaluation_metrics.json); "
                    "the served score draws them", source)
        return None
    return {"candidate": source, "weights": locating_weights[source]}


def explaining_map(candidate: str, served_weights: dict[str, dict | None]) -> dict | None:
    """Where the served score reads no patches (the model, the baseline), the first fitted servable patch
    score in registry order (the patch classifier before the fold stack), whose defect map then shows
    where a defect may be, beside the served score; None when the served score draws its own map or no
    patch score was fitted."""
    if "patches" in SCORERS[candidate].reads:
        return None
    for name, kind in SCORERS.items():
        if kind.servable and "patches" in kind.reads and served_weights.get(name):
            return {"candidate": name, "weights": served_weights[name]}
    return None


def log_operating_point(name: str, point: dict) -> None:
    validation = point["validation"]
    logger.info("%s operating point (rule %s): threshold %s; precision %.3f (%.0f%% %s lower bound %.3f), recall "
                "%.3f of an oracle %.3f (recall efficiency %s) on %d images of %s", name, point["rule"],
                format_threshold(point["threshold"]), validation["precision"], 100 * validation["bound_level"],
                validation["bound_method"], validation["precision_lower_bound"], validation["recall"],
                validation["oracle_recall"], format_figure(validation["recall_efficiency"]), validation["images"],
                point.get("threshold_chosen_on_images", "the validation split"))
    if not point["reached"]:
        logger.warning("%s: target precision %.2f NOT reached on %s. %s", name, point["target_precision"],
                       point.get("threshold_chosen_on_images", "the validation split"), point["fallback"])


def pooling_loss(held_out: pd.DataFrame, column: str) -> float:
    """How much better out-of-fold scores rank once each fold is put on one scale (Platt-calibrated on
    its own rows, as the fold stack does) than pooled as they are: the AUROC that fold fits scoring on
    scales of their own cost."""
    targets, folds = held_out["target"].to_numpy(int), held_out["fold"].to_numpy()
    raw = probability_logit(held_out[column].to_numpy(float))
    calibrated = raw.copy()
    for number in np.unique(folds):
        rows = folds == number
        a, b = platt(raw[rows], targets[rows])
        calibrated[rows] = a * raw[rows] + b
    loss = (metrics_at_threshold(targets, calibrated, 0.5)["auroc"] - metrics_at_threshold(targets, raw, 0.5)["auroc"])
    return float(loss) if np.isfinite(loss) else 0.0


def warn_low_efficiency(point: dict, loss: float, level: str) -> None:
    """One warning when the threshold keeps under ``LOW_EFFICIENCY`` of the recall its own images allow,
    naming the likelier cause: fold scores on different scales, or the rule's confidence bound."""
    validation = point["validation"]
    efficiency = validation.get("recall_efficiency")
    if efficiency is None or efficiency >= LOW_EFFICIENCY:
        if loss > POOLING_LOSS:  # the oracle of pooled scores suffers as much: say it apart
            logger.warning("The out-of-fold scores the threshold was chosen on rank worse pooled than each fold on one "
                           "scale (AUROC %.3f lower): their fold fits score on scales of their own, so the threshold "
                           "may keep less of the served score's recall than it did there. "
                           "evaluate.operating_candidate=auto serves the fold stack, which calibrates every fold "
                           "before pooling", loss)
        return
    if loss > POOLING_LOSS:
        cause = (f"the fold fits score on scales of their own: pooled as they are, their out-of-fold scores rank worse "
                 f"than each on one scale (AUROC {loss:.3f} lower); evaluate.operating_candidate=auto serves the fold "
                 "stack, which calibrates every fold before pooling")
    else:
        cause = (f"the rule's confidence bound costs recall on {validation['images']} images "
                 f"({validation['valid_images']} valid); more labelled images, a lower evaluate.{level}, or "
                 "evaluate.rule=point keep more, at a less certain precision")
    logger.warning("Operating point keeps recall %.3f where a threshold on the same %d images reaches %.3f at "
                   "precision %.2f (recall efficiency %.2f, under %.2f). Likely cause and fix: %s", validation["recall"],
                   validation["images"], validation["oracle_recall"], point["target_precision"], efficiency,
                   LOW_EFFICIENCY, cause)
