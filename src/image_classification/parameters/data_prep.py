"""Parameters of the data_prep pipeline (``conf/base/parameters_data_prep.yml``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from image_classification.errors import SourceError
from image_classification.sources import SPLITS


@dataclass(frozen=True)
class SplitFractions:
    """Each label's share of images in train, val and test.

    Typed so that Kedro checks it when parameters load: impossible fractions stop a run before
    a single image is decoded, not after every image has been.
    """

    train: float = 0.7
    val: float = 0.2
    test: float = 0.1

    def __post_init__(self) -> None:
        validated_fractions(asdict(self))


def validated_fractions(fractions: dict) -> dict[str, float]:
    """The fractions as floats, each in (0, 1) and adding up to 1; else a SourceError naming the fix."""
    values = {name: float(fractions.get(name, -1)) for name in SPLITS}
    for name, value in values.items():
        if not 0.0 < value < 1.0:
            raise SourceError(
                f"data_prep.split.{name} is {fractions.get(name)}; each of train, val and test must "
                "be a fraction strictly between 0 and 1"
            )
    if abs(sum(values.values()) - 1.0) > 1e-6:
        raise SourceError(
            f"data_prep.split fractions add up to {sum(values.values()):.4f}, not 1: {values}; "
            "change them so that train + val + test = 1"
        )
    return values
