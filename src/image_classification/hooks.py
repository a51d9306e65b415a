"""Kedro hooks that keep a project's outputs sound when the disk fills up or two runs share a project.

:class:`PartialSaveCleanup`: a versioned save that fails halfway (disk full, read-only folder, file-size
limit) leaves a partial file in the run's new version folder, and Kedro loads the newest version folder
that holds the file, so the partial file would hide the previous, complete version. The hook removes it,
so the previous version stays the one that loads. (``SafetensorsDataset`` already writes atomically.)

:class:`SharedStateLock`: the feature cache and the training state are not versioned: two runs writing
them at once would mix one run's features with the other's index. A run whose pipeline writes them holds
a lock file for its whole duration; a second such run on the same project stops at once with a message
naming the first (its process id, pipelines and start time) instead of waiting for hours. Runs that write
only versioned outputs (data_prep, evaluate, predict, ...) never wait: each run saves under its own
timestamped version, and a run reads back what it saved itself.

:class:`ParameterCheck`: a misspelt parameter key (``data_prep.sorce``) or a source setting its kind does not
read (a root with the demo kind) would be ignored, and the run would go on with the defaults; the hook refuses
them when the run's configuration loads, before any node runs, naming the closest known key or the kind to set.

:class:`NodeTimes`: where a run's time went. Each node's wall time is logged when it ends, and the run
ends with one line that lists the nodes from the slowest down, and one for the datasets whose loading and
saving took longest, so that a user (or a benchmark) sees at once which stage to make faster or to skip.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from kedro.config import OmegaConfigLoader
from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset, get_filepath_str

from image_classification.errors import UserError

logger = logging.getLogger(__name__)

SHARED_STATE = ("backbone_features", "training_state")
"""Unversioned datasets that only one run at a time may write."""
LOCK_FILE = "data/.shared_state.lock"


class ConcurrentRunError(UserError, RuntimeError):
    """Another run on this project is writing the state this run would write."""


class ParameterCheck:
    """Refuses unknown parameter keys and source settings their kind ignores, before any node runs and
    before tracking opens its store (:func:`~image_classification.parameters.known_keys.check_parameters`)."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        from image_classification.parameters.known_keys import check_parameters  # imports torch: only for a run

        loader = context.config_loader
        check_parameters(loader["parameters"], base_parameters(loader))


def base_parameters(loader: OmegaConfigLoader) -> dict:
    """The parameters of ``conf/base`` alone: without the run's environment and ``--params``."""
    base = OmegaConfigLoader(conf_source=str(loader.conf_source), base_env=loader.base_env,
                             default_run_env=loader.base_env, env=loader.base_env,
                             config_patterns={"parameters": loader.config_patterns["parameters"]},
                             merge_strategy=loader.merge_strategy)
    return base["parameters"]


class PartialSaveCleanup:
    """Removes what a failed versioned save left in its new version folder (see the module's docstring)."""

    def __init__(self) -> None:
        self._saving: str | None = None

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._saving = dataset_name

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._saving = None

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict, pipeline: Any, catalog: Any) -> None:
        name, self._saving = self._saving, None
        if name is None:
            return
        try:
            dataset = catalog.get(name)
            if not isinstance(dataset, AbstractVersionedDataset) or getattr(dataset, "_protocol", "") != "file":
                return
            # this run's version of it (_get_save_path would refuse: the partial file is already there)
            path = Path(get_filepath_str(dataset._get_versioned_path(dataset.resolve_save_version()), "file"))
            remove_partial_version(path)
        except Exception as cleanup_error:  # noqa: BLE001 - never hide the error that stopped the run
            logger.warning("Could not remove the partial new version of '%s': %s", name, cleanup_error)
            return
        logger.error("Saving '%s' failed; its partial new version was removed, the previous version still "
                     "loads: %s", name, path)


def remove_partial_version(path: Path) -> None:
    """Delete ``path`` (a file or a folder a dataset was writing) and its version folder if left empty."""
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    try:
        path.parent.rmdir()  # the version folder, when this was its only file
    except OSError:
        pass


class SharedStateLock:
    """Holds :data:`LOCK_FILE` while a run writes the unversioned state (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock: FileLock | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline: Any, catalog: Any) -> None:
        used = set(pipeline.all_outputs()) | set(pipeline.inputs())
        writes = sorted(name for name in SHARED_STATE if name in used)
        if not writes:
            return
        path = Path(run_params.get("project_path") or os.getcwd()) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ConcurrentRunError(
                f"another `kedro run` on this project is writing {', '.join(writes)} ({_owner(path)}); they are not "
                "versioned, so two runs cannot write them at once. Wait for that run to finish and run again "
                f"(the lock is {path}; it is released when that process ends)") from None
        self._lock = lock
        owner = {"pid": os.getpid(), "pipelines": run_params.get("pipeline_names") or ["__default__"],
                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        path.with_suffix(".owner").write_text(json.dumps(owner))

    @hook_impl
    def after_pipeline_run(self, run_params: dict, run_result: Any, pipeline: Any, catalog: Any) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict, pipeline: Any, catalog: Any) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _owner(path: Path) -> str:
    try:
        owner = json.loads(path.with_suffix(".owner").read_text())
        return f"process {owner['pid']}, pipelines {', '.join(owner['pipelines'])}, started {owner['started']}"
    except (OSError, ValueError, KeyError):
        return "its details are unknown"


class NodeTimes:
    """Logs each node's wall time and, at the end of a run, the nodes from the slowest down, and the
    datasets whose loading and saving took longest (time outside any node's function)."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.io_seconds: dict[str, float] = {}

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline: Any, catalog: Any) -> None:
        self._started, self.seconds, self.io_seconds = {}, {}, {}

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        started = self._started.pop(node.name, None)
        if started is not None:
            self.seconds[node.name] = time.perf_counter() - started
            logger.info("Node %s took %.1f s", short_node_name(node.name), self.seconds[node.name])

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str) -> None:
        self._started[f"load {dataset_name}"] = time.perf_counter()

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str) -> None:
        self._add_io(f"load {dataset_name}", dataset_name)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str) -> None:
        self._started[f"save {dataset_name}"] = time.perf_counter()

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        self._add_io(f"save {dataset_name}", dataset_name)

    def _add_io(self, key: str, dataset_name: str) -> None:
        started = self._started.pop(key, None)
        if started is not None:
            self.io_seconds[dataset_name] = self.io_seconds.get(dataset_name, 0.0) + time.perf_counter() - started

    @hook_impl
    def after_pipeline_run(self, run_params: dict, run_result: Any, pipeline: Any, catalog: Any) -> None:
        if self.seconds:
            logger.info("Time per node, slowest first (%.1f s in %d nodes): %s", sum(self.seconds.values()),
                        len(self.seconds), _ranked(self.seconds))
        if self.io_seconds:
            logger.info("Loading and saving datasets took %.1f s; slowest first: %s", sum(self.io_seconds.values()),
                        _ranked(self.io_seconds, 8))


def _ranked(seconds: dict[str, float], most: int | None = None) -> str:
    ranked = sorted(seconds.items(), key=lambda item: -item[1])[:most]
    return ", ".join(f"{short_node_name(name)} {value:.1f} s" for name, value in ranked)


DEFAULT_ENV = "local"  # what Kedro runs without --env (settings.py: default_run_env)


def run_title(run_params: dict) -> tuple[list[str], str, str]:
    """A run's pipelines (``["__default__"]`` for plain ``kedro run``), what they are called in a title
    (``all stages`` or ``train+evaluate``) and its environment: the MLflow run's name and the run
    summary's title are both ``<env>: <stages>``."""
    names = run_params.get("pipeline_names") or ["__default__"]
    return names, "all stages" if names == ["__default__"] else "+".join(names), run_params.get("env") or DEFAULT_ENV


def short_node_name(name: str) -> str:
    """A node's function name without the ``(inputs) -> [outputs]`` Kedro appends to unnamed nodes."""
    return name.split("(", 1)[0].strip()


def saved_path(dataset: Any, saved: bool = True) -> Path | None:
    """The local file a dataset has just written (``saved``), or would load now."""
    try:
        if getattr(dataset, "_version", None) is not None:
            path = dataset._get_versioned_path(dataset.resolve_save_version()) if saved else dataset._get_load_path()
        else:
            path = dataset._filepath
    except Exception:  # a dataset with no local file, or no version yet
        return None
    path = Path(str(path))
    return path if path.is_file() else None
