"""The whole parameter tree, checked once before any node runs (the ``ParameterCheck`` hook).

A misspelt or misplaced key (``data_prep.sorce``) would otherwise be ignored: the defaults run, with
rc 0 and no warning. It is refused instead, naming the closest known key. Known keys are those of
``conf/base`` (every block the project ships), the fields of the typed blocks (optional ones may be
absent from the YAML) and the settings the source readers take. A map whose keys are the user's own
words (``data_prep.source.labels``) is known as a whole; its keys are not checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import fields

from image_classification.distributed import DaskSettings
from image_classification.errors import ParameterError
from image_classification.image_files import ImageLimits
from image_classification.parameters.data_prep import SplitFractions
from image_classification.parameters.embedding_analysis import EmbeddingAnalysisConfig
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.parameters.predict import PredictConfig
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.parameters.source_settings import check_source_settings
from image_classification.parameters.train import TrainConfig
from image_classification.parameters.zero_shot import ZeroShotConfig
from image_classification.sources import SOURCE_SETTINGS, UNLABELLED_SETTINGS, label_words

TYPED_BLOCKS = {
    "model": ModelConfig, "runtime": RuntimeConfig, "runtime.dask": DaskSettings, "train": TrainConfig,
    "evaluate": EvaluateConfig, "zero_shot": ZeroShotConfig, "embedding_analysis": EmbeddingAnalysisConfig,
    "predict": PredictConfig, "data_prep.split": SplitFractions, "data_prep.image_checks": ImageLimits,
}
"""Each block a dataclass reads, by its dotted name: its fields are known keys."""
SOURCES = {"data_prep.source": SOURCE_SETTINGS, "predict.source": UNLABELLED_SETTINGS}
USER_WORDS = ("data_prep.source.labels",)
"""Maps keyed by the user's own words: known as a whole, their keys never checked (even where conf/base
gives some)."""
SHOWN = 10
"""Unknown keys named in one message; more are counted, so that a wrong file does not fill a screen."""


def dotted_keys(tree: Mapping, prefix: str = "") -> Iterator[str]:
    """Every key of ``tree`` and of the maps inside it, dotted (``data_prep.source.kind``)."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        yield name
        if isinstance(value, Mapping):
            yield from dotted_keys(value, f"{name}.")


def known_keys(base: Mapping) -> set[str]:
    """The keys the project reads: those of ``base`` (conf/base's parameters), of the typed blocks and
    of the source settings, with every block above them."""
    keys = set(dotted_keys(base))
    keys |= {f"{block}.{field.name}" for block, typed in TYPED_BLOCKS.items() for field in fields(typed)}
    keys |= {f"{block}.{setting}" for block, kinds in SOURCES.items()
             for setting in ("kind", *(name for names in kinds.values() for name in names))}
    return keys | {".".join(key.split(".")[:depth]) for key in keys for depth in range(1, key.count(".") + 1)}


def unknown_keys(params: Mapping, known: set[str], prefix: str = "") -> list[str]:
    """Keys of ``params`` not in ``known``, dotted; below an unknown key nothing more is reported, and a
    map with no known keys below it (the user's own words) is not looked into. A key with a dot in its
    name (``{"evaluate.rule": "point"}``, as a notebook may pass) is unknown: Kedro keeps it as one key,
    which no step reads, instead of ``rule`` inside ``evaluate``."""
    unknown = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        if name not in known or "." in str(key):
            unknown.append(name)
        elif (isinstance(value, Mapping) and name not in USER_WORDS
              and any(other.startswith(f"{name}.") for other in known)):
            unknown += unknown_keys(value, known, f"{name}.")
    return unknown


def _described(key: str, known: set[str]) -> str:
    if key in known:  # its name holds a dot: the nesting was lost on the way
        return f"'{key}' (one key with dots in its name; nest it instead, as --params does)"
    closest = difflib.get_close_matches(key, sorted(known), n=1)
    return f"'{key}'" + (f" (did you mean '{closest[0]}'?)" if closest else "")


def check_known_keys(params: Mapping, base: Mapping) -> None:
    """Refuse every key of ``params`` the project does not read, each with the closest known one."""
    known = known_keys(base)
    unknown = unknown_keys(params, known)
    if not unknown:
        return
    named = ", ".join(_described(key, known) for key in unknown[:SHOWN])
    more = f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
    raise ParameterError(
        f"unknown parameter{'s' if len(unknown) > 1 else ''} {named}{more}: no step reads "
        f"{'them' if len(unknown) > 1 else 'it'}. Correct or remove {'them' if len(unknown) > 1 else 'it'} "
        "(in --params, conf/local or conf/<env>); docs/configuration.md lists every parameter"
    )


def _block(params: Mapping, dotted: str) -> Mapping:
    """``params``' block at a dotted name, or {} where there is none (or it is not a map)."""
    for key in dotted.split("."):
        params = params.get(key) if isinstance(params, Mapping) else None
    return params if isinstance(params, Mapping) else {}


def check_parameters(params: Mapping, base: Mapping) -> None:
    """The checks of the whole tree: unknown keys, source settings their kind ignores, the label words."""
    check_known_keys(params, base)
    for block, settings in SOURCES.items():
        check_source_settings(_block(params, block), block, settings)
    label_words(_block(params, "data_prep.source").get("labels"))
