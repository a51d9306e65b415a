"""`kedro run` for this project: Kedro's own command, except that errors a user can fix end the run
with one line that says what to change, and exit status 1, instead of a traceback.

Which errors are a user's: this package's :class:`~image_classification.errors.UserError` (bad
parameters, sources, tables, missing pretrained weights, a stage run before its inputs exist),
Kedro's typed-parameter check, a dataset that cannot be loaded or saved (a missing input version, a
refused checkpoint), missing configuration, and an unknown pipeline name. Anything else is a bug
and keeps its traceback. Set ``IMAGE_CLASSIFICATION_TRACEBACK=1`` to see the traceback of a user
error too.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pkgutil
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
import psutil
from kedro.config import MissingConfigException
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError
from kedro.pipeline import Pipeline
from kedro.validation.exceptions import ParameterValidationError

from image_classification.errors import ArtefactError, UserError

USER_ERRORS = (UserError, ParameterValidationError, DatasetError, MissingConfigException)
TRACEBACK_VARIABLE = "IMAGE_CLASSIFICATION_TRACEBACK"


# commands whose server runs in a child process: kedro-viz's uvicorn, `mlflow ui`, Jupyter
SERVING_COMMANDS = ("viz", "mlflow", "jupyter")


def _stop_children_on_sigterm(argv: list[str]) -> None:
    """A SIGTERM to ``kedro viz`` (or ``kedro mlflow ui``, ``kedro jupyter``) alone, as a service manager or
    ``kill PID`` sends it, stopped kedro but left its server child holding the port. When this process is
    such a command, SIGTERM is passed on to every process it started, then ends it as before."""
    command = Path(argv[0].split()[-1]) if argv and argv[0].strip() else Path()
    if command.name != "kedro" and command.parent.name != "kedro":  # `kedro`, `python -m kedro` (so named)
        return  # imported by a test or a notebook, not the kedro command
    if len(argv) < 2 or argv[1] not in SERVING_COMMANDS or threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop)


_stop_children_on_sigterm(sys.argv)


@click.group(name="image-classification")
def cli() -> None:
    """Commands of the image-classification project."""


def _pipeline_names() -> list[str]:
    """The project's pipelines, found without importing them (importing all takes seconds)."""
    import image_classification.pipelines as package

    return [info.name for info in pkgutil.iter_modules(package.__path__) if info.ispkg]


def _all_pipelines() -> dict[str, Pipeline]:
    """Every pipeline of the project (Kedro itself loads only the ones a run asks for)."""
    return {name: importlib.import_module(f"image_classification.pipelines.{name}").create_pipeline()
            for name in _pipeline_names()}


def _writer(dataset: str) -> str | None:
    """The pipeline that writes ``dataset`` (the first by name where several do), or None."""
    writers = sorted(name for name, pipeline in _all_pipelines().items() if dataset in pipeline.all_outputs())
    return writers[0] if writers else None


def _catalog_config(project: Path, env: str | None) -> dict:
    """The project's catalog configuration in ``env``, as Kedro's settings read it."""
    from kedro.framework.project import settings

    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project / settings.CONF_SOURCE), env=env,
                                          **settings.CONFIG_LOADER_ARGS)
    return loader["catalog"]


def _check_pipeline_names(names: list[str]) -> None:
    pipelines = [*_pipeline_names(), "__default__"]
    unknown = [name for name in names if name not in pipelines]
    if unknown:
        raise click.BadParameter(
            f"no pipeline named {', '.join(map(repr, unknown))}; the pipelines are "
            f"{', '.join(sorted(pipelines))}",
            param_hint="'--pipelines'",
        )


# what a newcomer is told is missing, for inputs whose name says little
_MISSING = {"model_checkpoint": "no trained model yet", "operating_point": "no operating point yet",
            "anomaly_detector": "no fitted anomaly detector yet"}


def _missing_input(error: Exception, env: str | None) -> str:
    """For an input that does not exist yet (in this environment): what is missing and which pipeline
    writes it, instead of Kedro's message about the dataset's class and path; else ""."""
    message = str(error)
    match = re.match(r"([\w.]+): (Failed while loading data|Did not find any versions)", message)
    if not match or not ("No such file" in message or "Did not find any versions" in message):
        return ""
    dataset = match.group(1)
    writer = _writer(dataset)
    if writer is None:
        return ""
    run = f"kedro run --env {env}" if env else "kedro run"
    where = f" in the {env} environment" if env else ""
    return (f"{_MISSING.get(dataset, f'no {dataset} yet')}: '{dataset}' does not exist yet{where}. It is written "
            f"by the {writer} pipeline: run `{run}` (every stage) or `{run} --pipelines {writer}` first")


def _damaged_artefact_hint(error: BaseException, message: str, env: str | None = None) -> str:
    """For a damaged or cut-short artefact: ``message`` with the pipeline that writes it named."""
    artefact = _cause_of_type(error, ArtefactError)
    path = re.match(r"'([^']+)'", str(artefact)) if artefact else None
    dataset = _dataset_at(path.group(1), env) if path and ArtefactError.RERUN in message else None
    writer = _writer(dataset) if dataset else None
    if writer is None:
        return message
    run = f"kedro run --env {env}" if env else "kedro run"
    return message.replace(ArtefactError.RERUN, f"run `{run} --pipelines {writer}` to write {dataset} again")


def _cause_of_type(error: BaseException | None, kind: type) -> BaseException | None:
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error


def _dataset_at(path: str, env: str | None = None) -> str | None:
    """The catalog entry whose file ``path`` is (or is a version of), read from the project's configuration
    (of ``env``: each environment has its own data root)."""
    for name, entry in _catalog_config(Path.cwd(), env).items():
        filepath = entry.get("filepath") if isinstance(entry, dict) and "{" not in name else None
        if filepath and (path.endswith(filepath) or f"{filepath}/" in path):
            return name
    return None


# a save that fails for want of room or write access: the user's to fix, whatever exception carries it
_OUTPUT_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EFBIG: "the file-size limit was reached"}


def _output_error(error: BaseException) -> str:
    """One line for an output that could not be written (disk full, read-only), naming its path; else ""."""
    cause: BaseException | None = error
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in _OUTPUT_ERRORS):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return ""
    named = re.search(r"filepath=(?:\w+\()?'?([^,')]+)", str(error))
    path = cause.filename or (named.group(1) if named else "an output")
    return (f"cannot save {path}: {cause.strerror} ({_OUTPUT_ERRORS[cause.errno]}); the new version was not kept "
            "and the previous one still loads. Free some space or make the folder writable, then run again")


def _run(**options: Any) -> dict[str, Any]:
    _check_pipeline_names([*options.get("pipelines", ()), *filter(None, [options.get("pipeline")])])
    try:
        return kedro_run.callback(**options)
    except Exception as error:
        output_error = _output_error(error)
        if not (output_error or isinstance(error, USER_ERRORS)):
            raise
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        if output_error:
            raise click.ClickException(output_error) from None
        message = _missing_input(error, options.get("env")) or _damaged_artefact_hint(
            error, str(error).strip() or type(error).__name__, options.get("env"))
        raise click.ClickException(
            f"{message}\n(a problem with the input or the parameters, so no traceback; "
            f"set {TRACEBACK_VARIABLE}=1 to see one)"
        ) from None


run = click.Command(
    name="run",
    callback=_run,
    params=list(kedro_run.params),
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
cli.add_command(run)


@cli.command()
@click.option("--keep", default=3, show_default=True, type=click.IntRange(min=1),
              help="Versions to keep of each dataset (the newest).")
@click.option("--env", "-e", default=None, help="The environment whose outputs to prune (its data_root).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def prune(keep: int, env: str | None, dry_run: bool) -> None:
    """Remove all but the newest versions of every versioned dataset (models, figures, tables).

    MLflow keeps its own copies of logged figures and models: remove old runs in the MLflow UI,
    then `mlflow gc --backend-store-uri sqlite:///mlruns.db` frees their files.
    """
    from kedro.framework.startup import bootstrap_project

    from image_classification.prune import prune as prune_versions

    project = Path.cwd()
    bootstrap_project(project)
    results = prune_versions(_catalog_config(project, env), project, keep, dry_run)
    removed = [result for result in results if result.removed]
    for result in removed:
        click.echo(f"{result.dataset.relative_to(project)}: {'would remove' if dry_run else 'removed'} "
                   f"{len(result.removed)}, kept {len(result.kept)} (newest {result.kept[-1]})")
    freed = sum(result.bytes_removed for result in removed) / 1e6
    click.echo(f"{'Would free' if dry_run else 'Freed'} {freed:.1f} MB in {len(removed)} of {len(results)} "
               f"versioned datasets, keeping the newest {keep} version(s) of each.")
