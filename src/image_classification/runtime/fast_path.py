"""Passes over images through ONNX Runtime, checked against eager PyTorch, with a clean fallback.

Train's frozen-backbone extraction, the score stage's pass over the files and fine-tuning's frozen
blocks all run the same way (``runtime.backend``): ``auto`` exports the part that does not train to
ONNX and runs it in ONNX Runtime on a CPU (docs/decisions/0007), ``torch`` runs eager
PyTorch, ``onnxruntime`` insists. A :class:`CheckedRun` compares the two on the first readable images
of the pass (:func:`~.parity.parity_difference`) and falls back to PyTorch (under ``auto``) when they
differ by more than ``runtime.parity_tolerance``. predict serves through :mod:`.backends` instead.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import torch

from image_classification.artefacts import Checkpoint
from image_classification.backbones import BackboneSpec
from image_classification.errors import ParameterError
from image_classification.model import ImageClassifier
from image_classification.runtime.backends import OnnxRuntimeBackend, onnx_session
from image_classification.runtime.choice import choose_extraction_backend
from image_classification.runtime.export import CHECKPOINT_KEY, export_feature_model, export_module, export_onnx
from image_classification.runtime.graphs import INPUT_NAME, OUTPUT_NAMES
from image_classification.runtime.parity import parity_difference

logger = logging.getLogger(__name__)

FeatureRun = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def onnx_or_fallback(requested: str, what: str, build: Callable[[], FeatureRun]) -> FeatureRun | None:
    """``build()`` the ONNX Runtime run; if it fails, None (PyTorch) under ``auto``, the error otherwise."""
    try:
        return build()
    except Exception as error:  # the exporter and onnxruntime raise many exception types
        if requested == "onnxruntime":
            raise
        logger.warning("%s could not be run in ONNX Runtime (%s); running it in PyTorch", what.capitalize(), error)
        return None


class CheckedRun:
    """One pass's batches through ONNX Runtime (``fast``), checked once against eager PyTorch.

    On the first batch with readable images, ``fast``'s outputs for up to ``parity_images`` of them
    are compared with ``eager``'s (:func:`~.parity.parity_difference`). Over ``tolerance``, a
    ``requested`` auto falls back to ``eager`` for the rest of the pass (that batch included) with a
    warning, and an explicit onnxruntime stops with a :class:`ParameterError`. Without ``fast`` it is
    ``eager``.
    """

    def __init__(self, fast: FeatureRun | None, eager: FeatureRun, requested: str, tolerance: float,
                 parity_images: int, what: str) -> None:
        self.run, self.eager, self.requested = fast or eager, eager, requested
        self.name = "onnxruntime" if fast is not None else "torch"
        self.tolerance, self.parity_images, self.what = tolerance, parity_images, what
        self.parity: float | None = None

    def __call__(self, images: torch.Tensor, reasons: list[str]) -> tuple[torch.Tensor, ...]:
        outputs = self.run(images)
        readable = torch.tensor([not reason for reason in reasons], dtype=torch.bool)
        if self.name != "onnxruntime" or self.parity is not None or not readable.any():
            return outputs
        probe = images[readable][: self.parity_images]
        self.parity = parity_difference(tuple(o[readable][: self.parity_images] for o in outputs), self.eager(probe))
        logger.info("%s: ONNX Runtime vs PyTorch on %d images, largest relative difference %.1e (tolerance %g)",
                    self.what.capitalize(), len(probe), self.parity, self.tolerance)
        if self.parity <= self.tolerance:
            return outputs
        if self.requested == "onnxruntime":
            raise ParameterError(f"{self.what} from ONNX Runtime differ from PyTorch by {self.parity:.1e}, over "
                                 f"runtime.parity_tolerance {self.tolerance:g}; use runtime.backend auto or torch")
        logger.warning("%s from ONNX Runtime differ from PyTorch by %.1e (over %g); running the pass in PyTorch",
                       self.what.capitalize(), self.parity, self.tolerance)
        self.name, self.run = "torch", self.eager
        return self.run(images)


def checked_run(requested: str, device: torch.device, eager: FeatureRun, build_fast: Callable[[], FeatureRun] | None,
                tolerance: float, what: str, parity_images: int = 16) -> CheckedRun:
    """The :class:`CheckedRun` of one pass on ``runtime.backend`` ``requested``: ``build_fast()`` (the
    ONNX Runtime run) where :func:`~.choice.choose_extraction_backend` picks ONNX Runtime, falling back
    to ``eager`` as :func:`onnx_or_fallback` says when it cannot be built; ``eager`` alone otherwise or
    without ``build_fast``."""
    fast = None
    if build_fast is not None and choose_extraction_backend(requested, device) == "onnxruntime":
        fast = onnx_or_fallback(requested, what, build_fast)
    return CheckedRun(fast, eager, requested, tolerance, parity_images, what)


def onnx_feature_run(backbone: torch.nn.Sequential, spec: BackboneSpec, head_input: str, patch_grid: int,
                     threads: int | None) -> FeatureRun:
    """The frozen backbone exported (:func:`~.export.export_feature_model`) and run in ONNX Runtime."""
    started = time.perf_counter()
    onnx_model = export_feature_model(backbone, spec.input_size, head_input, patch_grid)
    session = onnx_session(onnx_model, threads)
    logger.info("Exported the frozen backbone to ONNX (%.1f MB) in %.1f s", len(onnx_model) / 1e6,
                time.perf_counter() - started)

    def run(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(array) for array in session.run(None, {INPUT_NAME: images.float().numpy()}))

    return run


def onnx_scoring_run(checkpoint: Checkpoint, classifier: ImageClassifier, threads: int | None) -> FeatureRun:
    """The whole checkpoint (fine-tuned blocks included) exported as predict exports it, in ONNX Runtime."""
    started = time.perf_counter()
    onnx_model = export_onnx(copy.deepcopy(classifier).cpu(), int(checkpoint.input_size),
                             {CHECKPOINT_KEY: checkpoint.fingerprint()})
    backend = OnnxRuntimeBackend(onnx_model, threads)
    logger.info("Exported the model to ONNX (%.1f MB) in %.1f s", len(onnx_model) / 1e6, time.perf_counter() - started)

    def run(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = backend(images)
        return tuple(torch.from_numpy(outputs[name]) for name in OUTPUT_NAMES)

    return run


def onnx_blocks_run(frozen: torch.nn.Sequential, input_size: int, threads: int | None) -> FeatureRun:
    """Backbone blocks exported on their own (what fine-tuning keeps frozen), in ONNX Runtime."""
    session = onnx_session(export_module(copy.deepcopy(frozen).cpu(), input_size, ["features"]), threads)

    def run(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(session.run(None, {INPUT_NAME: images.float().numpy()})[0]),)

    return run
