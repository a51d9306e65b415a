"""Source settings that contradict the source's kind (``data_prep.source``, ``predict.source``).

A setting the kind does not read would be ignored: ``data_prep.source.root=/x`` with the default
``kind: demo`` runs the demo, with rc 0, on images the user never meant. With the demo kind, which
reads no setting, such a setting is refused before any node runs, naming the kind that reads it.
With another kind it is a warning: a setting left over from a lower layer (an environment's
``root`` when ``--params`` switches to ``kind=csv``) is common and harmless there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from image_classification.errors import ParameterError
from image_classification.sources import RENAMED_KINDS

logger = logging.getLogger(__name__)


def is_set(value: object) -> bool:
    """Whether a setting holds something: null, "" and maps or lists of nothing hold nothing
    (``class_map: {valid: [], invalid: [], unseen: []}`` is the unset default)."""
    if value is None or value == "":
        return False
    if isinstance(value, Mapping):
        return any(is_set(item) for item in value.values())
    if isinstance(value, list | tuple):
        return len(value) > 0
    return True


def check_source_settings(source: Mapping, parameter: str, settings: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse settings of ``source`` (the ``parameter`` block) that its kind does not read, when the kind
    reads none (demo); warn about them otherwise.

    ``settings`` maps each kind to the settings it reads (``sources.SOURCE_SETTINGS``); an unknown
    kind is left to the reader, which names the kinds, and a key no kind reads to the key check.
    """
    kind = source.get("kind")
    kind = RENAMED_KINDS.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in settings:
        return
    readers = {key: [name for name, keys in settings.items() if key in keys] for key in source}
    ignored = [key for key, value in source.items()
               if key != "kind" and readers[key] and key not in settings[kind] and is_set(value)]
    if not ignored:
        return
    named = ", ".join(f"{parameter}.{key}" for key in ignored)
    if settings[kind]:
        logger.warning("%s: set, but %s.kind is '%s', which does not read it; it is ignored", named, parameter, kind)
        return
    kinds = readers[ignored[0]]
    alternatives = f" (or {', '.join(kinds[1:])})" if len(kinds) > 1 else ""
    raise ParameterError(
        f"{named} {'is' if len(ignored) == 1 else 'are'} set but {parameter}.kind is '{kind}', which reads "
        f"no setting, so the run would ignore {'it' if len(ignored) == 1 else 'them'}; set "
        f"{parameter}.kind={kinds[0]}{alternatives} to read {parameter}.{ignored[0]}, or remove {named}"
    )
