"""Errors a user can fix: their messages say what to change, and `kedro run` prints them without a traceback.

Everything raised for a bad parameter, file, table or missing pretrained weight derives from
:class:`UserError`; a plain exception anywhere else is a bug and keeps its traceback. Each class
also derives from the built-in exception it refines, so ``except ValueError`` still catches it.
"""

from __future__ import annotations

from kedro.io.core import DatasetError


class UserError(Exception):
    """Something the user gave cannot be used as given; the message names it and the fix."""


class SourceError(UserError, ValueError):
    """The user's data source cannot be used as given; the message says what to change."""


class DataError(UserError, ValueError):
    """The images or a stage's saved outputs cannot support the requested step (for example, a split
    without a class); the message says which step to rerun or what data to add."""


class ArtefactError(DataError, DatasetError):
    """A saved artefact is damaged or incomplete (its bytes disagree with its checksum, or it is cut
    short); the message names the file. A :class:`~kedro.io.core.DatasetError` too, so Kedro passes it
    on from a dataset's ``load`` as it is, and ``kedro run`` adds which pipeline writes the artefact."""

    RERUN = "run the pipeline that writes it again"
    """How each message ends; ``kedro run`` puts the pipeline's name in (it knows which one writes what)."""


class ParameterError(UserError, ValueError):
    """A parameter has a value the project cannot use; the message names it and the allowed values."""


class BackboneUnavailableError(UserError, RuntimeError):
    """Pretrained weights cannot be found or loaded; the message says how to fix that."""
