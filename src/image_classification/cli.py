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

import errno
import importlib
import os
import pkgutil
import re
from pathlib import Path
from typing import Any

import click
from kedro.config import MissingConfigException
from kedro.framework.cli.project import run as kedro_run
from kedro.io import DatasetError
from kedro.pipeline import Pipeline
from kedro.validation.exceptions import ParameterValidationError

from image_classification.errors import ArtefactError, UserError

USER_ERRORS = (UserError, ParameterValidationError, DatasetError, MissingConfigException)
TRACEBACK_VARIABLE = "IMAGE_CLASSIFICATION_TRACEBACK"


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


def _check_pipeline_names(names: list[str]) -> None:
    pipelines = [*_pipeline_names(), "__default__"]
    unknown = [name for name in names if name not in pipelines]
    if unknown:
        raise click.BadParameter(
            f"no pipeline named {', '.join(map(repr, unknown))}; the pipelines are "
            f"{', '.join(sorted(pipelines))}",
            param_hint="'--pipelines'",
        )


def _missing_input_hint(error: Exception) -> str:
    """For an input that does not exist yet: which pipeline writes it, so the user can run that first."""
    message = str(error)
    match = re.match(r"([\w.]+): Failed while loading data", message)
    if not match or not ("No such file" in message or "Did not find any versions" in message):
        return ""
    dataset = match.group(1)
    writers = sorted(name for name, pipeline in _all_pipelines().items()
                     if dataset in pipeline.all_outputs())
    if not writers:
        return ""
    return (f"\n'{dataset}' does not exist yet: it is written by the {writers[0]} pipeline; run "
            f"`kedro run --pipelines {writers[0]}` (or the whole `kedro run`) first")


def _damaged_artefact_hint(error: BaseException, message: str) -> str:
    """For a damaged or cut-short artefact: ``message`` with the pipeline that writes it named."""
    artefact = _cause_of_type(error, ArtefactError)
    path = re.match(r"'([^']+)'", str(artefact)) if artefact else None
    dataset = _dataset_at(path.group(1)) if path and ArtefactError.RERUN in message else None
    writers = sorted(name for name, pipeline in _all_pipelines().items()
                     if dataset in pipeline.all_outputs()) if dataset else []
    if not writers:
        return message
    return message.replace(ArtefactError.RERUN, f"run `kedro run --pipelines {writers[0]}` to write {dataset} again")


def _cause_of_type(error: BaseException | None, kind: type) -> BaseException | None:
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error


def _dataset_at(path: str) -> str | None:
    """The catalog entry whose file ``path`` is (or is a version of), read from the project's configuration."""
    from kedro.framework.project import settings

    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(Path.cwd() / settings.CONF_SOURCE),
                                          **settings.CONFIG_LOADER_ARGS)
    for name, entry in loader["catalog"].items():
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
        message = _damaged_artefact_hint(error, str(error).strip() or type(error).__name__)
        message += _missing_input_hint(error)
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
