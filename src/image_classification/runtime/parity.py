"""The one check that ONNX Runtime may stand in for eager PyTorch, with one tolerance.

The measure (:func:`parity_difference`): for each output a pass hands on, the largest
``|ONNX Runtime - PyTorch|`` divided by ``max(1, largest |PyTorch|)`` of that output; the parity
of a pass is the largest over its outputs. Relative, because the outputs live on different scales
(patch vectors reach about 30, pooled features about 6), so one absolute bound would mean different
things for each; floored at 1, so that an output in [0, 1] (a score) is held to the plain absolute
difference.

The tolerance is ``runtime.parity_tolerance`` (:data:`PARITY_TOLERANCE` by default), for every
check: train's feature extraction, the score stage's pass, fine-tuning's frozen blocks
(:class:`~.fast_path.CheckedRun`, on all their outputs) and predict's export (on the scores it
serves: the model's, and the served candidate's where it reads the patch vectors). predict once had
its own ``predict.parity_tolerance``, an absolute bound on those scores; they lie in [0, 1], where
the relative measure is that same absolute difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from image_classification.model import ImageClassifier
from image_classification.runtime.backends import OnnxRuntimeBackend, TorchBackend
from image_classification.runtime.graphs import FINE_OUTPUT, output_names

PARITY_TOLERANCE = 1e-4
"""The default of ``runtime.parity_tolerance``."""

ServedScore = Callable[[dict[str, np.ndarray]], np.ndarray]


def _as_float(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """At least float32 (float64 stays float64), as a tensor."""
    tensor = torch.as_tensor(values)
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def output_difference(fast: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """One output's largest ``|fast - reference|`` relative to ``max(1, largest |reference|)``."""
    fast, reference = _as_float(fast), _as_float(reference)
    if not reference.numel():
        return 0.0
    return float((fast - reference).abs().max() / reference.abs().max().clamp_min(1.0))


def parity_difference(fast: Sequence[torch.Tensor | np.ndarray], reference: Sequence[torch.Tensor | np.ndarray]) -> float:
    """How far a pass's outputs (``fast``, ONNX Runtime) are from PyTorch's (``reference``): the largest
    :func:`output_difference` over the outputs. The pass is trusted when this is at most the tolerance."""
    return max((output_difference(a, b) for a, b in zip(fast, reference)), default=0.0)


@dataclass(frozen=True)
class ExportParity:
    """An exported model against PyTorch eager fp32 on the same images.

    Attributes:
        difference: :func:`parity_difference` of what predict serves: the score, and with a
            ``served`` score, that one too; what is compared with the tolerance.
        max_abs_difference: per output (and ``served_score``), the largest absolute difference,
            for the report.
    """

    difference: float
    max_abs_difference: dict[str, float]


def export_parity(classifier: ImageClassifier, onnx_model: bytes, images: torch.Tensor, patch_grid: int = 0,
                  served: ServedScore | None = None) -> ExportParity:
    """ONNX Runtime against PyTorch eager fp32 (NCHW) on ``images``; with ``served`` (a score computed
    from a backend's outputs), that score is compared too."""
    exported = OnnxRuntimeBackend(onnx_model)(images)
    fine = FINE_OUTPUT in exported  # fine patch vectors are compared where the export has them
    reference = TorchBackend(classifier, torch.device("cpu"), channels_last=False, patch_grid=patch_grid,
                             fine=fine)(images)
    absolute = {name: float(np.max(np.abs(reference[name] - exported[name]), initial=0.0))
                for name in output_names(patch_grid, fine)}
    fast, slow = [exported["score"]], [reference["score"]]
    if served is not None:
        fast.append(served(exported))
        slow.append(served(reference))
        absolute["served_score"] = float(np.max(np.abs(slow[-1] - fast[-1]), initial=0.0))
    return ExportParity(difference=parity_difference(fast, slow), max_abs_difference=absolute)


def parity(classifier: ImageClassifier, onnx_model: bytes, images: torch.Tensor, patch_grid: int = 0,
           served: ServedScore | None = None) -> dict[str, float]:
    """Largest absolute difference, per output, between ONNX Runtime and PyTorch eager fp32; with
    ``served``, also of that score (``served_score``). See :func:`export_parity`."""
    return export_parity(classifier, onnx_model, images, patch_grid, served).max_abs_difference
