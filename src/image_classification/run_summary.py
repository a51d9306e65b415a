"""The answer a run ends with: what is served and how well, what zero_shot flags, what predict decided,
how many warnings, and where the figures are; printed last, after the node timings and the tracking
hook's own output, and kept in MLflow as ``run_summary.txt``.

Built from what the run itself saved (the reports' JSON as the catalog wrote it, the figures' paths),
so it never reads an older run's outputs: a stage that did not run is not in the summary.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_datasets.matplotlib import MatplotlibDataset

from image_classification.hooks import run_title, saved_path
from image_classification.metrics import format_threshold

logger = logging.getLogger(__name__)

REPORTS = ("split_summary", "evaluation_metrics", "zero_shot_metrics", "prediction_summary")
# the figures a newcomer opens first, in this order; any other saved figure is counted
KEY_FIGURES = ("precision_recall_figure", "confusion_matrix_figure", "error_gallery", "defect_map_gallery",
               "training_curves", "pca_scatter_figure", "detector_comparison_figure")


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.0f}%"


def _figure(value: Any) -> str:
    return "not measured" if value is None else f"{float(value):.3f}"


def split_lines(summary: dict) -> list[str]:
    splits = {name: sum(per.values()) if isinstance(per, dict) else int(per)
              for name, per in (summary.get("per_split") or {}).items()}
    unseen = summary.get("images", 0) - sum(splits.values())
    counts = ", ".join([f"{name} {count}" for name, count in splits.items()] + [f"unseen kinds {unseen}"] * (unseen > 0))
    return [f"images: {summary.get('images', 0)} indexed ({counts}); {summary.get('rejected', 0)} rejected"
            " (see rejected_images)"]


def evaluation_lines(metrics: dict) -> list[str]:
    served = metrics.get("served") or {}
    if not served:
        return []
    return [f"served: {served.get('candidate')} at threshold {format_threshold(served.get('threshold'))} "
            f"(chosen on {served.get('threshold_chosen_on', 'validation')}; target precision "
            f"{metrics.get('target_precision')})",
            f"test: recall {_figure(served.get('test_recall'))} at precision {_figure(served.get('test_precision'))}; "
            f"the best any threshold reaches on these images (oracle): recall {_figure(served.get('test_oracle_recall'))}"]


def zero_shot_lines(metrics: dict) -> list[str]:
    per_kind = metrics.get("decision_per_kind") or {}
    if not per_kind:
        return []
    flagged = ", ".join(f"{_percent(figures.get('flagged'))} of {kind}" for kind, figures in per_kind.items())
    return [f"zero-shot ({metrics.get('flag_detector')}): flagged {flagged}"]


def prediction_lines(summary: dict) -> list[str]:
    return [f"predict: {summary.get('images', 0)} images, {summary.get('accepted_as_valid', 0)} accepted as valid, "
            f"{summary.get('anomaly_flagged', 0)} flagged as unlike the training images, "
            f"{summary.get('errors', 0)} unreadable (see predictions.parquet)"]


def summary_text(title: str, reports: dict[str, dict], figures: dict[str, Path], warnings: int,
                 project: Path) -> str:
    """The summary's lines, from the reports and figures this run saved."""
    lines = [f"Run summary ({title})"]
    makers = {"split_summary": split_lines, "evaluation_metrics": evaluation_lines,
              "zero_shot_metrics": zero_shot_lines, "prediction_summary": prediction_lines}
    for name in REPORTS:
        if name in reports:
            lines += makers[name](reports[name])
    lines.append(f"warnings: {warnings}" + (" (see the log above)" if warnings else ""))
    shown = [name for name in KEY_FIGURES if name in figures][:5]
    for name in shown:
        path = figures[name]
        lines.append(f"figure: {path.relative_to(project) if path.is_relative_to(project) else path}")
    if len(figures) > len(shown):
        lines.append(f"... and {len(figures) - len(shown)} more figures under {_reporting_folder(figures, project)}"
                     " (kedro viz shows them all)")
    return "\n".join("  " + line if index else line for index, line in enumerate(lines))


def _reporting_folder(figures: dict[str, Path], project: Path) -> str:
    folder = next(iter(figures.values())).parent.parent.parent
    return str(folder.relative_to(project) if folder.is_relative_to(project) else folder)


class RunSummary:
    """Collects what the run saves and prints its summary at the end (see the module's docstring)."""

    def __init__(self) -> None:
        self._reports: dict[str, dict] = {}
        self._figures: dict[str, Path] = {}
        self._catalog: Any = None
        self._counter = _CountWarnings()

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline: Any, catalog: Any) -> None:
        self._reports, self._figures, self._catalog = {}, {}, catalog
        self._started = time.time()
        self._counter.count = 0
        logging.getLogger().addHandler(self._counter)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        if dataset_name in REPORTS and isinstance(data, dict):
            self._reports[dataset_name] = data
        elif self._catalog is not None and isinstance(self._catalog.get(dataset_name), MatplotlibDataset):
            path = saved_path(self._catalog.get(dataset_name))
            if path is not None:
                self._figures[dataset_name] = path

    @hook_impl
    def after_pipeline_run(self, run_params: dict, run_result: Any, pipeline: Any, catalog: Any) -> None:
        logging.getLogger().removeHandler(self._counter)
        _, stages, env = run_title(run_params)
        title = f"{env}: {stages}"
        project = Path(run_params.get("project_path") or Path.cwd())
        text = summary_text(title, self._reports, self._figures, self._counter.count, project)
        print(f"\n{text}\n", file=sys.stdout, flush=True)  # printed, not logged: a log line wraps at 80 columns
        _to_mlflow(text, self._started)

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict, pipeline: Any, catalog: Any) -> None:
        logging.getLogger().removeHandler(self._counter)


def _to_mlflow(text: str, started: float) -> None:
    """``run_summary.txt`` in this run's MLflow run, which the tracking hook has just closed (it runs
    before this hook at the end of a run); nothing when tracking was off for this run."""
    try:
        import mlflow

        run = mlflow.last_active_run()
        if run is not None and run.info.start_time >= started * 1000 - 1000:
            mlflow.MlflowClient().log_text(run.info.run_id, text, "run_summary.txt")
    except Exception as error:  # noqa: BLE001 - the store's failures are the tracking hook's to report
        logger.debug("run_summary.txt not logged to MLflow: %s", error)
