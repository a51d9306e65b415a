"""predict's backends: each scores a batch of preprocessed images and returns the outputs of
:func:`~.graphs.output_names` as arrays. Fastest first on a CPU:

- ``onnxruntime``: the exported ONNX model in ONNX Runtime (CPU);
- ``torch``: PyTorch eager fp32 with channels_last memory, as the rest of the project runs it;
- ``torch_nchw``: plain PyTorch eager fp32 (NCHW), the baseline the benchmarks compare against.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from image_classification.model import ImageClassifier
from image_classification.fine_patches import tap_blocks
from image_classification.runtime.choice import BACKENDS, select_backend
from image_classification.runtime.graphs import INPUT_NAME, output_names, scoring_outputs

logger = logging.getLogger(__name__)


def onnx_session(onnx_model: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session whose idle threads sleep instead of spinning, leaving the cores to the
    decoding workers; ``threads`` None or 0: one per physical core."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


class Backend(Protocol):
    """Scores a batch of preprocessed images; see the module docstring for the outputs."""

    name: str

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """PyTorch eager fp32; ``channels_last`` lets oneDNN pick faster convolution kernels."""

    def __init__(self, classifier: ImageClassifier, device: torch.device, channels_last: bool = True,
                 threads: int | None = None, patch_grid: int = 0, fine: bool = True) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.name = "torch" if channels_last else "torch_nchw"
        self.device = device
        self.patch_grid, self.fine, self.taps = int(patch_grid), bool(fine), None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # a copy: .to() converts weights in place, and another backend may share the classifier
        self.classifier = copy.deepcopy(classifier).to(device, memory_format=self.memory_format).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        if self.patch_grid and self.taps is None:
            self.taps = tap_blocks(self.classifier.backbone, images.shape[-1])
        outputs = scoring_outputs(self.classifier, images.to(self.device, memory_format=self.memory_format),
                                  self.patch_grid, self.taps, self.fine)
        names = output_names(self.patch_grid, self.fine)
        return {name: value.float().cpu().numpy() for name, value in zip(names, outputs)}


class OnnxRuntimeBackend:
    """An exported model in ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, onnx_model: bytes, threads: int | None = None) -> None:
        self.session = onnx_session(onnx_model, threads)
        self.outputs = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        arrays = self.session.run(self.outputs, {INPUT_NAME: images.detach().cpu().float().numpy()})
        return dict(zip(self.outputs, arrays))


def build_backend(name: str, classifier: ImageClassifier, onnx_model: bytes | None, device: torch.device,
                  threads: int | None = None, patch_grid: int = 0, fine: bool = True) -> Backend:
    """A backend by name: onnxruntime, torch (channels_last) or torch_nchw; with ``patch_grid``, one
    that also returns patch vectors (an ONNX model must have been exported with the same grid)."""
    if name == "onnxruntime":
        if onnx_model is None:
            raise ValueError("the onnxruntime backend needs an exported ONNX model")
        backend = OnnxRuntimeBackend(onnx_model, threads)
        if set(backend.outputs) != set(output_names(patch_grid, fine)):
            raise ValueError(f"the ONNX model has the outputs {', '.join(backend.outputs)}, but the served score "
                             f"needs {', '.join(output_names(patch_grid, fine))}; run `kedro run --pipelines predict` "
                             "to export it again")
        return backend
    if name in ("torch", "torch_nchw"):
        return TorchBackend(classifier, device, channels_last=name == "torch", threads=threads, patch_grid=patch_grid,
                            fine=fine)
    raise ValueError(f"unknown inference backend '{name}'; choose one of {', '.join(BACKENDS)}")


def serving_backend(requested: str, classifier: ImageClassifier, onnx_model: bytes, onnx_parity: dict,
                    device: torch.device, threads_for: Callable[[str], int | None], patch_grid: int = 0,
                    fine: bool = True) -> Backend:
    """The backend ``predict.backend`` asks for (:func:`~.choice.select_backend`, trusting the export as
    far as ``onnx_parity``, predict's parity report, says), returning patch vectors when ``patch_grid``
    is set; with ``auto``, PyTorch when ONNX Runtime fails to start."""
    name, reason = select_backend(requested, device, bool(onnx_parity.get("passed")), onnx_parity.get("reason", ""))
    try:
        backend = build_backend(name, classifier, onnx_model, device, threads_for(name), patch_grid, fine)
    except Exception as error:  # onnxruntime raises its own exception types for a bad model
        if requested != "auto":
            raise
        logger.warning("ONNX Runtime could not load the model (%s); scoring with PyTorch instead", error)
        name, reason = "torch", f"auto: PyTorch channels_last, because ONNX Runtime failed to start ({error})"
        backend = build_backend(name, classifier, None, device, threads_for(name), patch_grid, fine)
    logger.info("Inference backend: %s (%s)", name, reason)
    return backend
