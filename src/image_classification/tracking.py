"""Experiment tracking: every ``kedro run`` becomes one MLflow run in the project's own SQLite store.

kedro-mlflow's hook does the work (``conf/base/mlflow.yml``: store, experiment, parameters); this
subclass adds what the project needs on top:

- the catalog says what MLflow gets: an entry whose ``metadata.mlflow`` has ``metrics`` has every
  number of the JSON it saves logged as a metric (named ``<dataset>.<key>.<key>``); one with
  ``artifact: <folder>`` has the file Kedro just wrote copied into the run's ``<folder>``; with
  ``model_part: <name>`` that file is also part of the pyfunc model logged and registered when the
  run chose an operating point (:mod:`image_classification.mlflow_model`);
- the run is tagged with the pipelines it ran (``pipelines``, ``stage``), and with a
  :class:`~image_classification.hooks.NodeTimes` it logs each node's wall time as
  ``node_seconds.<node>``;
- a store that cannot be written costs one warning naming it, never the run's Kedro outputs;
- a SQLite store is created under a lock file beside it (``mlruns.db.lock``), held only while the
  context sets the store up: two runs started together would otherwise both create its schema, and the
  loser ran without tracking; a run that is itself waiting (or stopped) mid-pipeline never holds it;
- ``IMAGE_CLASSIFICATION_MLFLOW=off`` turns tracking off.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import re
import threading
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

# before MLflow is imported anywhere: its usage telemetry would try to reach the network
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# its progress bars for artefacts it copies back (logging the model) would end every run's output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from filelock import FileLock  # noqa: E402
from kedro.framework.hooks import hook_impl  # noqa: E402
from kedro.framework.startup import bootstrap_project  # noqa: E402, F401  (sets up Kedro's logging of warnings first)

# kedro-mlflow's own pyfunc class has no type hints, which MLflow warns about when it is imported,
# on every run, under a warning filter of its own: not shown
_show_warning, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None
try:
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook  # noqa: E402
finally:
    warnings.showwarning = _show_warning
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types import ColSpec, Schema  # noqa: E402

from image_classification.hooks import NodeTimes, run_title, saved_path, short_node_name  # noqa: E402

logger = logging.getLogger(__name__)


class _StoreErrorsReportedByHook(logging.Filter):
    """Drops MLflow's own log of a database error, traceback and all, while the project's hook is
    calling MLflow in this thread: MLflow raises the error after logging it, and the hook reports it
    once, in one line that names the store (a full disk or a locked database must not print tracebacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = threading.local()  # the threaded runner calls the node hooks from its workers

    @property
    def depth(self) -> int:
        return getattr(self.calls, "depth", 0)

    @depth.setter
    def depth(self, value: int) -> None:
        self.calls.depth = value

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.depth and record.exc_info)


_STORE_ERRORS = _StoreErrorsReportedByHook()
logging.getLogger("mlflow.store.db.utils").addFilter(_STORE_ERRORS)


@contextlib.contextmanager
def _store_errors_reported_by_hook() -> Iterator[None]:
    _STORE_ERRORS.depth += 1
    try:
        yield
    finally:
        _STORE_ERRORS.depth -= 1


SWITCH = "IMAGE_CLASSIFICATION_MLFLOW"
STORE_LOCK_TIMEOUT_S = 300  # another run creating or migrating the store; then tracking is off with a warning
OFF_VALUES = ("0", "off", "false", "no")
REGISTERED_MODEL = "image_classification"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "path")]),
    outputs=Schema([ColSpec("string", "path"), ColSpec("double", "score"), ColSpec("string", "predicted_label"),
                    ColSpec("string", "error", required=False)]),
)
MODEL_REQUIREMENTS = ("mlflow", "torch", "torchvision", "safetensors", "numpy", "pandas", "pillow")


def tracking_switched_off() -> bool:
    return os.environ.get(SWITCH, "").strip().lower() in OFF_VALUES


def flatten_metrics(data: Any, prefix: str) -> dict[str, float]:
    """Every number in a nested JSON-like structure, keyed by its path (``a.b.0``); booleans,
    strings and nulls are left out. Keys keep only the characters MLflow allows."""
    found: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            found.update(flatten_metrics(value, f"{prefix}.{key}"))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            found.update(flatten_metrics(value, f"{prefix}.{index}"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and data == data:
        found[re.sub(r"[^\w\-. /:]", "_", prefix)[:250]] = float(data)
    return found


def _plain(value: Any) -> Any:
    """A typed parameter block (dataclass) as the dict kedro-mlflow flattens into parameters."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def _under_project(uri: Any, project_path: Path) -> Any:
    """A relative SQLite store path (``sqlite:///mlruns.db``) made absolute under the project.

    SQLite and MLflow resolve a relative path against the working directory, so a notebook that
    ``kedro jupyter`` starts in ``notebooks/`` opened a second, empty ``notebooks/mlruns.db`` and its
    runs never reached the project's store. kedro-mlflow anchors plain paths (``mlruns``) at the
    project already, but leaves URIs with a scheme as they are."""
    prefix = "sqlite:///"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if not path or path.startswith(":") or Path(path).is_absolute():  # in memory, or already absolute
        return uri
    return prefix + (project_path / path).as_posix()


def _anchored_config(config: dict, project_path: Path) -> dict:
    """mlflow.yml with the store and the experiment's artefact folder anchored at the project."""
    config = copy.deepcopy(config)
    server = config.get("server") or {}
    for key in ("mlflow_tracking_uri", "mlflow_registry_uri"):
        if key in server:
            server[key] = _under_project(server[key], project_path)
    kwargs = ((config.get("tracking") or {}).get("experiment") or {}).get("create_experiment_kwargs") or {}
    location = kwargs.get("artifact_location")
    if isinstance(location, str) and location and "://" not in location and not Path(location).is_absolute():
        kwargs["artifact_location"] = (project_path / location).as_posix()  # MLflow would take the cwd's
    return config


def _store_description(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"MLflow database {Path(uri[len('sqlite:///'):]).absolute()}"
    return f"MLflow store {uri}"


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """Held while a SQLite store is created, migrated and a run opened in it (its schema set-up is not
    safe for two processes at once); another run holding it is waited for. Other stores need none."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    if not path or path.startswith(":"):  # not SQLite, or in memory
        return contextlib.nullcontext()
    return FileLock(path + ".lock", timeout=STORE_LOCK_TIMEOUT_S)


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook, with the project's metrics, artefacts, model, tags and failure handling."""

    def __init__(self, node_times: NodeTimes | None = None) -> None:
        super().__init__()
        self._node_times = node_times
        self._tracking = False
        self._catalog = None
        self._model_parts: dict[str, Path] = {}

    def _give_up(self, uri: str, error: BaseException) -> None:
        """One warning that names the store, then no more tracking in this run."""
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        logger.warning("MLflow tracking is off for this run: the %s cannot be written (%s); Kedro's outputs are "
                       "saved as usual. Set %s=off to stop tracking.", _store_description(uri), reason, SWITCH)
        self._tracking = False
        self._is_mlflow_enabled = False
        self.run_id = None
        try:
            with _store_errors_reported_by_hook():
                while mlflow.active_run():
                    mlflow.end_run("FAILED")
        except Exception:  # the store is what failed; nothing more to tell
            pass

    @contextlib.contextmanager
    def _calling_store(self, context: Any = None) -> Iterator[None]:
        """Around the hook's MLflow calls: a store that fails costs one warning naming it (and MLflow's
        own log of the error is dropped), never the run."""
        try:
            with _store_errors_reported_by_hook():
                yield
        except Exception as error:
            self._give_up(self._store_uri(context), error)

    def _close_run(self) -> None:
        """Leave no MLflow run of this pipeline run active. kedro-mlflow reopens the run before every
        node (``nested``, for threaded runners) and MLflow stacks each reopening, but it closes it once:
        the run stayed active, so a second ``session.run`` in the same process (a notebook) logged into
        the first one. A run the user opened before the session is theirs and stays open."""
        if getattr(self, "_already_active_mlflow", False) or self.run_id is None:
            return
        while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
            mlflow.end_run("FINISHED")

    def _store_uri(self, context: Any = None) -> str:
        config = getattr(self, "mlflow_config", None)
        if config is not None and config.server.mlflow_tracking_uri:
            return config.server.mlflow_tracking_uri
        try:
            return context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"]
        except Exception:
            return os.environ.get("MLFLOW_TRACKING_URI", "mlruns")

    @staticmethod
    def _anchor_at_project(context: Any) -> None:
        """Give kedro-mlflow the project's mlflow.yml with relative store paths under the project, so
        that a session started from another folder (a notebook) tracks into the same store."""
        loader = context.config_loader
        try:
            config = loader["mlflow"]
        except Exception:  # no mlflow.yml (or no pattern for it): kedro-mlflow's defaults, which it anchors
            return
        loader["mlflow"] = _anchored_config(config, Path(context.project_path))

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._tracking = False
        self.mlflow_config = None
        if tracking_switched_off():
            logger.info("MLflow tracking is off (%s=%s)", SWITCH, os.environ[SWITCH])
            return
        with self._calling_store(context):
            self._anchor_at_project(context)
            with _store_lock(self._store_uri(context)):
                super().after_context_created(context)
            self._tracking = True

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self._catalog = catalog
        self._model_parts = {}
        if not self._tracking:
            self._is_mlflow_enabled = False
            self.run_id = None
            return
        with self._calling_store():  # the store exists by now (after_context_created made it under the lock)
            super().before_pipeline_run(run_params, pipeline, catalog)
            if self._is_mlflow_enabled:
                self._name_run(run_params)

    def _name_run(self, run_params: dict[str, Any]) -> None:
        """Tag the run with its pipelines and environment, and name it after both (``cifar10_dev: all
        stages``): kedro-mlflow names every run after its pipeline alone (``__default__``), and its
        ``kedro_command`` tag leaves ``--env`` out, so runs of two environments looked alike."""
        names, stage, env = run_title(run_params)
        mlflow.set_tags({"pipelines": ",".join(names), "stage": stage, "env": env, "mlflow.runName": f"{env}: {stage}"})
        command = mlflow.get_run(self.run_id).data.tags.get("kedro_command", "") if self.run_id else ""
        if run_params.get("env") and command and "--env" not in command:
            mlflow.set_tag("kedro_command", f"{command} --env {env}")

    @hook_impl
    def before_node_run(self, node: Any, catalog: Any, inputs: dict[str, Any], is_async: bool) -> None:
        if not (self._tracking and self._is_mlflow_enabled):
            return
        with self._calling_store():
            super().before_node_run(node, catalog, {name: _plain(value) for name, value in inputs.items()}, is_async)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        if not (self._tracking and self._is_mlflow_enabled and self._catalog is not None):
            return
        try:
            dataset = self._catalog[dataset_name]
        except Exception:
            return
        spec = (getattr(dataset, "metadata", None) or {}).get("mlflow") or {}
        if not spec:
            return
        with self._calling_store():
            if spec.get("metrics"):
                mlflow.log_metrics(flatten_metrics(data, dataset_name), run_id=self.run_id)
            path = saved_path(dataset) if "artifact" in spec or "model_part" in spec else None
            if path is not None and "artifact" in spec:
                mlflow.log_artifact(str(path), artifact_path=spec["artifact"], run_id=self.run_id)
            if path is not None and "model_part" in spec:
                self._model_parts[spec["model_part"]] = path

    def _log_model(self) -> None:
        """When the run chose an operating point: the pyfunc model of it and its checkpoint, registered."""
        parts = dict(self._model_parts)
        if "operating_point" not in parts:
            return
        if "checkpoint" not in parts:  # evaluate alone: the checkpoint it read
            for name in list(self._catalog.keys()):
                dataset = self._catalog[name]
                if ((getattr(dataset, "metadata", None) or {}).get("mlflow") or {}).get("model_part") == "checkpoint":
                    parts["checkpoint"] = saved_path(dataset, saved=False)
            if parts.get("checkpoint") is None:
                return
        if mlflow.active_run() is None or mlflow.active_run().info.run_id != self.run_id:
            mlflow.start_run(run_id=self.run_id, nested=True)
        with warnings.catch_warnings():  # no input example: it would have to be an image file on this machine
            warnings.filterwarnings("ignore", message=r"(?s).*input example was not provided", category=UserWarning)
            self._log_pyfunc(parts)

    @staticmethod
    def _log_pyfunc(parts: dict[str, Path]) -> None:
        mlflow.pyfunc.log_model(
            name="image_classifier", python_model=str(MODEL_CODE),
            artifacts={part: str(path) for part, path in parts.items()},
            signature=MODEL_SIGNATURE, registered_model_name=REGISTERED_MODEL,
            pip_requirements=[f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS],
        )

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if not (self._tracking and self._is_mlflow_enabled):
            return
        with self._calling_store():
            if self._node_times is not None and self._node_times.seconds:
                # each node's wall time, so that runs compare on speed as on quality
                mlflow.log_metrics({f"node_seconds.{short_node_name(name)}": round(seconds, 3)
                                    for name, seconds in self._node_times.seconds.items()}, run_id=self.run_id)
            self._log_model()
            super().after_pipeline_run(run_params, pipeline, catalog)
            self._close_run()

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if not (self._tracking and self._is_mlflow_enabled):
            return
        with self._calling_store():
            super().on_pipeline_error(error, run_params, pipeline, catalog)  # it closes every run of the thread
