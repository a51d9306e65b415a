"""Backbones by name: a registry (:mod:`.registry`) and one module per backbone.

To add a backbone, write ``backbones/<name>.py`` that builds a :class:`BackboneSpec` and passes
it to :func:`register`, and import that module below.
"""

from image_classification.backbones.common import file_sha256
from image_classification.backbones.registry import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    WEIGHT_CHOICES,
    BackboneSpec,
    backbone_spec,
    build_backbone,
    check_weights_choice,
    imagenet_classifier,
    imagenet_weights_file,
    register,
)

# registration imports: each module registers its backbone
from image_classification.backbones import efficientnet_lite0, efficientnet_lite2, mobilenet_v2  # noqa: E402,I001

__all__ = [
    "BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "WEIGHT_CHOICES", "BackboneSpec", "backbone_spec",
    "build_backbone", "check_weights_choice", "efficientnet_lite0", "efficientnet_lite2",
    "file_sha256", "imagenet_classifier", "imagenet_weights_file", "mobilenet_v2", "register",
]
