"""Parameters shared by several pipelines (``conf/base/parameters.yml``): the ``model`` block."""

from __future__ import annotations

from dataclasses import dataclass

from image_classification.backbones import BackboneSpec, backbone_spec, check_weights_choice, imagenet_weights_file
from image_classification.errors import ParameterError
from image_classification.model import HEAD_INPUTS, check_corner_fits


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone, with which weights; checked when parameters load, before any work.

    Kedro builds this from ``params:model`` and runs ``__post_init__`` before the first node,
    so a missing weights file stops a run at once with the fix, not after data_prep.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    weights_path: str | None = None
    head_input: str = "pooled"
    # the side images are resized to; None keeps the backbone's own (224 for efficientnet_lite0)
    input_size: int | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        if self.head_input not in HEAD_INPUTS:
            raise ParameterError(f"model.head_input must be one of {HEAD_INPUTS}, got '{self.head_input}'")
        if self.head_input == "corner":
            check_corner_fits(spec.feature_size, self.backbone)
        check_weights_choice(self.weights)
        if self.weights == "imagenet":
            imagenet_weights_file(self.backbone, self.weights_path)
        elif self.weights_path is not None:
            raise ParameterError(
                f"model.weights is 'none' but model.weights_path={self.weights_path!r} is set; "
                "use weights: imagenet to load the file, or drop weights_path"
            )

    @property
    def spec(self) -> BackboneSpec:
        return backbone_spec(self.backbone).at_input_size(self.input_size)
