"""Backbones by name, in the style of timm: each backbone module registers one :class:`BackboneSpec`.

A spec says what the backbone expects (input size, mean, std), what it returns (feature
channels and map size), how to build its full torchvision ImageNet skeleton, where its default
ImageNet weights come from and how to convert them. Everything else here works from the spec
alone, so adding a backbone is one new module plus its import in ``backbones/__init__.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from image_classification.backbones.common import load_into, read_state_dict
from image_classification.errors import BackboneUnavailableError, ParameterError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_CHOICES = ("imagenet", "none")
MIN_INPUT_SIZE = 32  # every registered backbone's overall stride


def _unchanged(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(state)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone expects as input, what it returns, and where its weights come from.

    Attributes:
        name: the registry key, the value of ``model.backbone``.
        input_size: the square side, in pixels, that images are resized to.
        mean: per-channel RGB mean subtracted after scaling pixels to [0, 1].
        std: per-channel RGB standard deviation divided by after subtracting the mean.
        feature_channels: channels of the backbone's final feature map.
        feature_size: side of that map for an ``input_size`` image (7 at 224 px, 9 at 260 px).
        skeleton: builds the full torchvision ImageNet model, randomly initialised; its
            ``features`` module is the backbone.
        weights_file: the default ImageNet weights file, checked; raises
            :class:`BackboneUnavailableError` with the fix when it is missing or wrong.
        weights_origin: what a ``weights_path`` state dict must have been saved from.
        fix_it: the way out offered in every weights error (e.g. another backbone).
        convert: turns a state dict of the weight source's layout into the skeleton's keys;
            state dicts already in the skeleton's layout pass unchanged.
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_channels: int
    feature_size: int
    skeleton: Callable[[], nn.Module]
    weights_file: Callable[[], Path]
    weights_origin: str
    fix_it: str
    convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] = _unchanged

    def at_input_size(self, input_size: int | None) -> BackboneSpec:
        """This spec with images resized to ``input_size`` (None: the backbone's own) and the map
        side that follows from the backbone's overall stride of 32 (padded convolutions round up)."""
        if input_size is None or input_size == self.input_size:
            return self
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < MIN_INPUT_SIZE:
            raise ParameterError(f"model.input_size must be a whole number of pixels, at least {MIN_INPUT_SIZE} (the "
                                 f"backbone's stride), got {input_size!r}; use null for {self.name}'s own "
                                 f"{self.input_size}")
        return replace(self, input_size=input_size, feature_size=-(-input_size // MIN_INPUT_SIZE))


_REGISTRY: dict[str, BackboneSpec] = {}
BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType(_REGISTRY)
"""Every registered backbone by name (read-only; add one with :func:`register`)."""


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry; a second backbone of the same name is an error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def backbone_spec(name: str) -> BackboneSpec:
    """Return a backbone's :class:`BackboneSpec`; ``ParameterError`` names the valid backbones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(_REGISTRY))}"
        ) from None


def check_weights_choice(weights: str) -> None:
    """``ParameterError`` unless ``weights`` is one of :data:`WEIGHT_CHOICES`."""
    if weights not in WEIGHT_CHOICES:
        raise ParameterError(
            f"unknown weights {weights!r}; use one of {', '.join(map(repr, WEIGHT_CHOICES))}"
        )


def imagenet_weights_file(name: str, weights_path: str | None) -> Path:
    """The file ImageNet weights for ``name`` would come from, checked to exist."""
    spec = backbone_spec(name)
    if weights_path is None:
        return spec.weights_file()
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise BackboneUnavailableError(
            f"weights_path {weights_path!r} does not exist or is not a file; fix "
            "`model.weights_path`, or set it to null to use the default weights."
        )
    return path


def _load_imagenet_weights(model: nn.Module, spec: BackboneSpec, weights_path: str | None) -> None:
    """Fill a full skeleton with ImageNet weights from the backbone's source or ``weights_path``."""
    path = imagenet_weights_file(spec.name, weights_path)
    try:
        state = spec.convert(read_state_dict(path))
    except KeyError as error:
        raise BackboneUnavailableError(f"{path}: {error.args[0]}") from None
    load_into(model, state, spec.name, path, spec.weights_origin)
    logger.info("Loaded %s ImageNet weights from %s", spec.name, path)


def imagenet_classifier(name: str, weights_path: str | None = None) -> nn.Module:
    """The full 1000-class ImageNet model of a backbone, for tests and diagnostics only."""
    spec = backbone_spec(name)
    model = spec.skeleton()
    _load_imagenet_weights(model, spec, weights_path)
    return model.eval()


def build_backbone(
    name: str, weights: str = "imagenet", weights_path: str | None = None
) -> nn.Module:
    """Build a feature extractor mapping (N, 3, size, size) images to (N, C, h, w) features.

    Args:
        name: a registered backbone (see :data:`BACKBONES`).
        weights: ``"imagenet"`` for pretrained weights, ``"none"`` for random initialisation.
        weights_path: a state dict of the backbone's full torchvision model to load instead of
            the default source (required for ``mobilenet_v2`` when torchvision's cache is empty).

    Returns:
        The backbone's ``features`` module, an ``nn.Sequential`` of blocks; its output is
        (N, ``spec.feature_channels``, ``spec.feature_size``, ``spec.feature_size``) for images
        of ``spec.input_size``.

    Raises:
        ParameterError: unknown backbone or weights, or a ``weights_path`` with ``weights="none"``.
        BackboneUnavailableError: the pretrained weights cannot be found or do not fit.
    """
    spec = backbone_spec(name)  # an unknown name is reported before a bad weights value
    check_weights_choice(weights)
    if weights == "none" and weights_path is not None:
        raise ParameterError(
            f"weights='none' asks for random initialisation but weights_path={weights_path!r} "
            "is set; use weights='imagenet' to load the file, or drop weights_path."
        )
    model = spec.skeleton()
    if weights == "imagenet":
        _load_imagenet_weights(model, spec, weights_path)
    else:
        logger.info("Built %s with random weights", name)
    return model.features
