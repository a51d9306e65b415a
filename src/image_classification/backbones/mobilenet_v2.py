"""MobileNetV2 at 224 px: torchvision's ``IMAGENET1K_V1`` weights, never downloaded here.

They are read from torchvision's download cache, or from a state dict given as
``model.weights_path``. Its map is (N, 1280, 7, 7).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import torch
import torchvision

from image_classification.backbones.common import file_sha256
from image_classification.backbones.registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, register
from image_classification.errors import BackboneUnavailableError

FIX_IT = "or use the offline backbone `model.backbone=efficientnet_lite0` (its weights ship with a pip package)."


def cache_file() -> Path:
    """Where torchvision keeps its downloaded ``MobileNet_V2_Weights.IMAGENET1K_V1`` file."""
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _fixes(path: Path) -> str:
    """The ways to make torchvision's MobileNetV2 weights available, one per line."""
    download = "import torchvision; torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1')"
    return (
        "Fix it with one of:\n"
        f'  1. connect to the internet once and run `python -c "{download}"`;\n'
        f"  2. copy {path.name} into {path.parent}/;\n"
        "  3. set `model.weights_path=/path/to/file.pth` to a torchvision mobilenet_v2 "
        "state dict;\n"
        f"  4. {FIX_IT}"
    )


def weights_file() -> Path:
    """torchvision's cached MobileNetV2 file, checked against the hash prefix in its name."""
    path = cache_file()
    if not path.is_file():
        raise BackboneUnavailableError(
            f"mobilenet_v2 ImageNet weights are not in torchvision's cache ({path}) and "
            "nothing is downloaded here. " + _fixes(path)
        )
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    if match and not file_sha256(path).startswith(match.group(1)):
        raise BackboneUnavailableError(
            f"{path} does not match the sha256 prefix {match.group(1)} in its name (a truncated "
            "or different download): delete it. " + _fixes(path)
        )
    return path


SPEC = register(BackboneSpec(
    name="mobilenet_v2",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_channels=1280,
    feature_size=7,
    skeleton=partial(torchvision.models.mobilenet_v2, weights=None),
    weights_file=weights_file,
    weights_origin="`torchvision.models.mobilenet_v2`",
    fix_it=FIX_IT,
))
