"""What evaluate measures on test: every candidate at the threshold chosen for it, the served one at the
operating point, beside the recall any threshold could have kept on the same images (the oracle)."""

from __future__ import annotations

import logging

import pandas as pd
from sklearn.metrics import average_precision_score

from image_classification.artefacts import jsonable
from image_classification.operating_point import OperatingPoint
from image_classification.errors import DataError
from image_classification.metrics import format_figure, format_threshold, report_at_threshold, select_threshold
from image_classification.scorers import SCORERS
from image_classification.selection.candidate import scored
from image_classification.selection.operating_point import log_operating_point

logger = logging.getLogger(__name__)


def measure(evaluation_scores: pd.DataFrame, operating_point: dict, scorer_fits: dict, evaluate, seed: int) -> dict:
    """Test metrics at the thresholds chosen on validation: the served candidate at the operating point,
    and beside it every other scored candidate at a threshold chosen by the same rule on its own
    validation scores; a table of all of them with the one of best validation average precision, and
    a summary of the served one. A candidate that was not scored keeps the record of why."""
    served = OperatingPoint.from_payload(operating_point).candidate
    metrics = {"split": "test", "target_precision": evaluate.target_precision, "rule": evaluate.rule,
               "operating_candidate": served}
    for name, kind in SCORERS.items():
        fit = scorer_fits.get(name) or {}
        if name != "model" and (kind.column not in evaluation_scores or evaluation_scores[kind.column].isna().all()):
            if fit.get("enabled") is False:
                metrics[name] = fit
            continue
        if name == served:
            point = operating_point
        else:
            point = select_threshold(*scored(evaluation_scores, "val", kind.column), evaluate.rule,
                                     evaluate.rule_settings)
            log_operating_point(name.capitalize(), point)
        metrics[name] = {**(fit or {"description": kind.description}),
                         **test_report(evaluation_scores, kind.column, point, evaluate, seed)}
    table = []
    for name, kind in SCORERS.items():
        if name in metrics and "test" in metrics[name]:
            targets, scores = scored(evaluation_scores, "val", kind.column)
            test = metrics[name]["test"]
            table.append({"candidate": name, "description": kind.description,
                          "val_average_precision": float(average_precision_score(targets, scores)),
                          "test_auroc": test["auroc"], "test_average_precision": test["average_precision"],
                          "test_recall": test["recall"], "test_precision": test["precision"],
                          "test_oracle_recall": test["oracle_recall"], "test_recall_efficiency": test["recall_efficiency"],
                          "target_precision_held": test["target_precision_held"]})
    best = max(table, key=lambda row: row["val_average_precision"])["candidate"]
    metrics["candidates"] = {"table": table, "best_by_validation_average_precision": best,
                             "operating_point_from": served,
                             "why": operating_point.get("why", "the operating point is the model's") + "; the other "
                                    "candidates are measured beside it, each at a threshold chosen on validation"}
    for row in table:
        log_test_report(row["candidate"], metrics[row["candidate"]], evaluate.target_precision)
    chosen_on, test = operating_point["validation"], metrics[served]["test"]
    metrics["served"] = {
        "candidate": served, "threshold": operating_point["threshold"],
        "threshold_chosen_on": operating_point.get("threshold_chosen_on", "validation"),
        "chosen_on_recall": chosen_on["recall"], "chosen_on_oracle_recall": chosen_on.get("oracle_recall"),
        "chosen_on_recall_efficiency": chosen_on.get("recall_efficiency"),
        "test_precision": test["precision"], "test_recall": test["recall"], "test_oracle_recall": test["oracle_recall"],
        "test_recall_efficiency": test["recall_efficiency"]}
    logger.info("Served: the %s at threshold %s keeps test recall %s of the %s any threshold reaches at precision "
                "%.2f on the same images (recall efficiency %s; %s where it was chosen), test precision %s",
                served.replace("_", " "), format_threshold(operating_point["threshold"]), format_figure(test["recall"]),
                format_figure(test["oracle_recall"]), evaluate.target_precision,
                format_figure(test["recall_efficiency"]), format_figure(chosen_on.get("recall_efficiency")),
                format_figure(test["precision"]))
    logger.info("Best validation average precision: %s (%s)", best,
                ", ".join(f"{row['candidate']} {row['val_average_precision']:.3f}" for row in table))
    return jsonable(metrics)


def test_report(evaluation_scores: pd.DataFrame, column: str, point: dict, config, seed: int) -> dict:
    """One candidate's test metrics at its threshold, intervals, and the oracle for comparison."""
    targets, scores = scored(evaluation_scores, "test", column)
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


def log_test_report(name: str, report: dict, target: float) -> None:
    test, bootstrap = report["test"], report["test_bootstrap"]
    oracle = report["oracle_picked_on_test"]["recall_at_target_precision"]
    logger.info("Test, %s at threshold %s: recall %s [%s-%s], precision %s [%s-%s] (%.0f%% bootstrap), target "
                "precision %.2f %s; AUROC %s, AP %s; oracle recall (threshold picked on test) %s, recall efficiency %s",
                name, format_threshold(report["threshold"]), format_figure(test["recall"]),
                *map(format_figure, bootstrap["recall"]),
                format_figure(test["precision"]), *map(format_figure, bootstrap["precision"]), 100 * bootstrap["level"],
                target, "held" if test["target_precision_held"] else "NOT held", format_figure(test["auroc"]),
                format_figure(test["average_precision"]), format_figure(oracle), format_figure(test["recall_efficiency"]))


def test_series(evaluation_scores: pd.DataFrame, evaluation_metrics: dict) -> list:
    """(label, targets, scores, threshold) of every measured candidate on test, for the figures."""
    return [(kind.label, *scored(evaluation_scores, "test", kind.column), evaluation_metrics[name]["threshold"])
            for name, kind in SCORERS.items() if "threshold" in evaluation_metrics.get(name, {})]
