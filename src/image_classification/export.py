"""The trained model exported to ONNX, and the inference backends that score batches of images.

Every backend takes a batch of preprocessed images, a (N, 3, size, size) float tensor, and
returns the same three arrays:

- ``score``: (N,) probability of *valid*;
- ``embedding``: (N, 50) the head's embedding (its pre-logits);
- ``features``: (N, 1280) the backbone's global-average-pooled features, which the default
  anomaly detector reads;
- ``patches``: only when the served score is the patch classifier's (``patch_grid`` > 0), the
  (N, grid², C) patch vectors of :func:`~image_classification.patches.patch_grid_features`.

Backends, fastest first on a CPU:

- ``onnxruntime``: the exported ONNX model in ONNX Runtime (CPU). Loading it never unpickles
  anything: an ONNX file is a protobuf of operators and weights.
- ``torch``: PyTorch eager fp32 with channels_last memory, as the rest of the project runs it.
- ``torch_nchw``: plain PyTorch eager fp32 (NCHW), the baseline the benchmarks compare against.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from image_classification.errors import ParameterError
from image_classification.model import (
    ClassifierHead,
    ImageClassifier,
    adapt_feature_map,
    pooled_features,
)
from image_classification.patches import patch_blocks, pool_patches

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "embedding", "features")
PATCH_OUTPUT = "patches"
BACKENDS = ("onnxruntime", "torch", "torch_nchw")
CHECKPOINT_KEY = "checkpoint_sha256"
"""ONNX metadata key naming the checkpoint a model was exported from."""


def scoring_outputs(classifier: ImageClassifier, images: torch.Tensor, patch_grid: int = 0,
                    taps: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """Score, embedding and pooled features of a batch through the project's own ``forward_all``;
    with ``patch_grid``, also its patch vectors, from the same pass (the blocks run one by one and
    the stride-8 and -16 maps of :func:`~image_classification.patches.patch_blocks`, or ``taps``,
    are kept, as the feature cache keeps them)."""
    if not patch_grid:
        outputs = classifier.forward_all(images)
        return torch.softmax(outputs["logits"], dim=1)[:, 1], outputs["embedding"], outputs["features"]
    from image_classification.inference import torch_features

    taps = taps if taps is not None else patch_blocks(classifier.backbone, images.shape[-1])
    head_input, pooled, patches = torch_features(classifier.backbone, taps, images, classifier.head_input, patch_grid)
    embedding, logits = classifier.head.embed_and_classify(head_input)
    return torch.softmax(logits, dim=1)[:, 1], embedding, pooled, patches


def output_names(patch_grid: int = 0) -> list[str]:
    """The outputs a backend returns: :data:`OUTPUT_NAMES`, and :data:`PATCH_OUTPUT` with a patch grid."""
    return [*OUTPUT_NAMES, PATCH_OUTPUT] if patch_grid else list(OUTPUT_NAMES)


def position_map(transform: Callable[[torch.Tensor], torch.Tensor], side: int) -> torch.Tensor:
    """``transform``, a map of a (N, C, side, side) feature map's positions that treats every channel
    alike (averaging, cutting), as one (out_positions, side²) matrix.

    Built by passing every one-hot position map through ``transform`` itself, then checked on a
    random map, so the matrix is that function and not a copy of its rules: a matrix product
    exports everywhere, whereas the TorchScript exporter cannot export adaptive average pooling
    whose windows overlap (7x7 to 4x4, 28x28 to 12x12).
    """
    positions = side**2
    probes = torch.eye(positions).reshape(positions, 1, side, side)
    matrix = transform(probes).reshape(positions, -1).T.contiguous()
    sample = torch.randn(2, 3, side, side)
    expected = transform(sample)
    if not torch.allclose((sample.flatten(2) @ matrix.T).reshape(expected.shape), expected, atol=1e-5):
        raise ValueError("the feature map transform is not a linear map of positions; the export cannot express it")
    return matrix


def head_input_map(classifier: ImageClassifier, feature_size: int) -> torch.Tensor:
    """``model.adapt_feature_map`` as one (extent², size²) matrix over the feature map's positions."""
    return position_map(lambda feature_map: adapt_feature_map(feature_map, classifier.head_input), feature_size)


class ScoringModel(nn.Module):
    """The whole classifier as one exportable graph: images in; score, embedding, pooled features
    (and, with ``patch_grid``, patch vectors) out.

    The same function as :func:`scoring_outputs`, with the head's input and the patch pooling
    applied as constant matrices (:func:`position_map`): a matrix product exports everywhere, whereas
    the TorchScript exporter cannot export adaptive average pooling from 7x7 to 4x4 (its windows
    overlap). Exported models are compared with :func:`scoring_outputs` (see :func:`parity`).
    """

    def __init__(self, classifier: ImageClassifier, input_size: int, patch_grid: int = 0) -> None:
        super().__init__()
        self.classifier = classifier
        self.taps = patch_blocks(classifier.backbone, input_size) if patch_grid else ()
        sides, x = [], torch.zeros(1, 3, input_size, input_size)
        with torch.no_grad():
            for block in classifier.backbone:
                x = block(x)
                sides.append(x.shape[-1])
        self.register_buffer("head_input_map", head_input_map(classifier, sides[-1]), persistent=False)
        self.extent = int(round(self.head_input_map.shape[0] ** 0.5))
        for number, tap in enumerate(self.taps):
            self.register_buffer(f"patch_map_{number}", position_map(lambda m: pool_patches(m, patch_grid), sides[tap]),
                                 persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature_map, tapped = images, []
        for index, block in enumerate(self.classifier.backbone):
            feature_map = block(feature_map)
            if index in self.taps:
                tapped.append(feature_map)
        # -1 keeps the batch size a variable of the exported graph (unflatten would fix it)
        head_input = (feature_map.flatten(2) @ self.head_input_map.T).reshape(-1, feature_map.shape[1], self.extent,
                                                                              self.extent)
        embedding, logits = self.classifier.head.embed_and_classify(head_input)
        outputs = (torch.softmax(logits, dim=1)[:, 1], embedding, pooled_features(feature_map))
        if tapped:
            parts = [t.flatten(2) @ getattr(self, f"patch_map_{n}").T for n, t in enumerate(tapped)]
            outputs += (torch.cat(parts, dim=1).transpose(1, 2),)
        return outputs


FEATURE_OUTPUTS = ("head_input", "pooled", "patches")


class FeatureModel(nn.Module):
    """A frozen backbone as one exportable graph: what train's feature cache keeps of every image.

    Images in; out: the 4x4 ``head_input`` (see :func:`~image_classification.model.adapt_feature_map`),
    the globally ``pooled`` features and, with ``patch_grid``, the (N, grid², C) ``patches`` of
    :func:`~image_classification.patches.patch_grid_features`, all float32, from one pass through
    the blocks. Position pooling is applied as :func:`position_map` matrices.
    """

    def __init__(self, backbone: nn.Sequential, input_size: int, head_input: str = "pooled",
                 patch_grid: int = 0) -> None:
        super().__init__()
        self.blocks = backbone.eval()
        self.taps = patch_blocks(backbone, input_size) if patch_grid else ()
        sides, x = [], torch.zeros(1, 3, input_size, input_size)
        with torch.no_grad():
            for block in self.blocks:
                x = block(x)
                sides.append(x.shape[-1])
        self.channels, self.grid = x.shape[1], ClassifierHead.INPUT_GRID
        self.register_buffer("head_map", position_map(lambda m: adapt_feature_map(m, head_input), sides[-1]),
                             persistent=False)
        for number, tap in enumerate(self.taps):
            self.register_buffer(f"patch_map_{number}", position_map(lambda m: pool_patches(m, patch_grid), sides[tap]),
                                 persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, tapped = images, []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                tapped.append(x)
        head_input = (x.flatten(2) @ self.head_map.T).reshape(-1, self.channels, self.grid, self.grid)
        outputs = (head_input, pooled_features(x))
        if tapped:
            parts = [t.flatten(2) @ getattr(self, f"patch_map_{n}").T for n, t in enumerate(tapped)]
            outputs += (torch.cat(parts, dim=1).transpose(1, 2),)
        return outputs


def export_feature_model(backbone: nn.Sequential, input_size: int, head_input: str = "pooled",
                         patch_grid: int = 0, opset: int = 17) -> bytes:
    """:class:`FeatureModel` as ONNX bytes, any batch size."""
    module = FeatureModel(copy.deepcopy(backbone).cpu().float(), input_size, head_input, patch_grid).eval()
    return export_module(module, input_size, list(FEATURE_OUTPUTS[: 3 if module.taps else 2]), opset=opset)


def export_module(module: nn.Module, input_size: int, output_names: list[str], properties: dict | None = None,
                  opset: int = 17) -> bytes:
    """A module taking a batch of images as checked ONNX bytes, any batch size, with ``properties`` in
    its metadata.

    Uses the TorchScript-based exporter: on this project's 2-core CPU it exports the model in
    about 7 s, the torch.export-based one (``dynamo=True``, which also needs ``onnxscript``) in
    60-100 s, for the same graph, speed and outputs (tracing a symbolic batch size dominates).
    """
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own notice, see above
        torch.onnx.export(
            module.eval(), (torch.zeros(2, 3, input_size, input_size),), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
        )
    model = onnx.load_from_string(buffer.getvalue())
    if properties:
        onnx.helper.set_model_props(model, {key: str(value) for key, value in properties.items()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_session(onnx_model: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session whose idle threads sleep instead of spinning, leaving the cores to the
    decoding workers; ``threads`` None or 0: one per physical core."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def export_onnx(classifier: ImageClassifier, input_size: int, properties: dict[str, str],
                opset: int = 17, patch_grid: int = 0) -> bytes:
    """The classifier as ONNX bytes (:class:`ScoringModel`), any batch size, with ``properties`` in its
    metadata; with ``patch_grid``, patch vectors as a fourth output."""
    return export_module(ScoringModel(classifier.eval(), input_size, patch_grid), input_size, output_names(patch_grid),
                         properties, opset)


def onnx_properties(onnx_model: bytes) -> dict[str, str]:
    """The metadata an exported model carries (e.g. :data:`CHECKPOINT_KEY`)."""
    import onnx

    return {prop.key: prop.value for prop in onnx.load_from_string(onnx_model).metadata_props}


def onnx_outputs(onnx_model: bytes) -> dict[str, tuple[int | None, ...]]:
    """An exported model's outputs and their shapes (None for a dimension the export left free, e.g. the batch)."""
    import onnx

    return {output.name: tuple(dim.dim_value if dim.HasField("dim_value") else None
                               for dim in output.type.tensor_type.shape.dim)
            for output in onnx.load_from_string(onnx_model).graph.output}


def serving_mismatch(onnx_model: bytes, patch_grid: int) -> str:
    """Why an export cannot give what an operating point serves from it ("" when it can): the outputs
    of :func:`output_names`, with patch vectors on ``patch_grid`` when the point reads them."""
    outputs = onnx_outputs(onnx_model)
    missing = [name for name in output_names(patch_grid) if name not in outputs]
    if missing:
        return f"it has no output {', '.join(missing)} (it has {', '.join(outputs)})"
    if patch_grid and outputs[PATCH_OUTPUT][1:2] not in ((None,), (patch_grid ** 2,)):
        return (f"its patch vectors hold {outputs[PATCH_OUTPUT][1]} patches per image, the operating point reads "
                f"a {patch_grid}x{patch_grid} grid")
    return ""


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime is installed, without importing it."""
    return importlib.util.find_spec("onnxruntime") is not None


class Backend(Protocol):
    """Scores a batch of preprocessed images; see the module docstring for the outputs."""

    name: str

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """PyTorch eager fp32; ``channels_last`` lets oneDNN pick faster convolution kernels."""

    def __init__(self, classifier: ImageClassifier, device: torch.device, channels_last: bool = True,
                 threads: int | None = None, patch_grid: int = 0) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.name = "torch" if channels_last else "torch_nchw"
        self.device = device
        self.patch_grid, self.taps = int(patch_grid), None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # a copy: .to() converts weights in place, and another backend may share the classifier
        self.classifier = copy.deepcopy(classifier).to(device, memory_format=self.memory_format).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        if self.patch_grid and self.taps is None:
            self.taps = patch_blocks(self.classifier.backbone, images.shape[-1])
        outputs = scoring_outputs(self.classifier, images.to(self.device, memory_format=self.memory_format),
                                  self.patch_grid, self.taps)
        return {name: value.float().cpu().numpy() for name, value in zip(output_names(self.patch_grid), outputs)}


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
                  threads: int | None = None, patch_grid: int = 0) -> Backend:
    """A backend by name: onnxruntime, torch (channels_last) or torch_nchw; with ``patch_grid``, one
    that also returns patch vectors (an ONNX model must have been exported with the same grid)."""
    if name == "onnxruntime":
        if onnx_model is None:
            raise ValueError("the onnxruntime backend needs an exported ONNX model")
        backend = OnnxRuntimeBackend(onnx_model, threads)
        if (PATCH_OUTPUT in backend.outputs) != bool(patch_grid):
            raise ValueError(f"the ONNX model {'has' if PATCH_OUTPUT in backend.outputs else 'lacks'} a patches output "
                             f"but the served score needs {'them' if patch_grid else 'none'}; run "
                             "`kedro run --pipelines predict` to export it again")
        return backend
    if name in ("torch", "torch_nchw"):
        return TorchBackend(classifier, device, channels_last=name == "torch", threads=threads, patch_grid=patch_grid)
    raise ValueError(f"unknown inference backend '{name}'; choose one of {', '.join(BACKENDS)}")


def parity(classifier: ImageClassifier, onnx_model: bytes, images: torch.Tensor, patch_grid: int = 0,
           served: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None) -> dict[str, float]:
    """Largest absolute difference, per output, between ONNX Runtime and PyTorch eager fp32; with
    ``served`` (a score computed from a backend's outputs), also of that score (``served_score``)."""
    reference = TorchBackend(classifier, torch.device("cpu"), channels_last=False, patch_grid=patch_grid)(images)
    exported = OnnxRuntimeBackend(onnx_model)(images)
    differences = {name: float(np.max(np.abs(reference[name] - exported[name]), initial=0.0))
                   for name in output_names(patch_grid)}
    if served is not None:
        differences["served_score"] = float(np.max(np.abs(served(reference) - served(exported)), initial=0.0))
    return differences


def select_backend(requested: str, device: torch.device, onnx_usable: bool, why_not_onnx: str = "") -> tuple[str, str]:
    """Which backend to run, and why.

    ``auto`` takes ONNX Runtime on a CPU when the export is usable (installed, of this
    checkpoint, matching PyTorch), else PyTorch channels_last; on a GPU it takes PyTorch, since
    this project's ONNX Runtime runs on the CPU only. An explicit choice is honoured or refused.
    """
    if requested not in ("auto", *BACKENDS):
        raise ParameterError(f"predict.backend must be auto or one of {', '.join(BACKENDS)}, got '{requested}'")
    if requested == "onnxruntime" and not onnx_usable:
        raise ParameterError(f"predict.backend is onnxruntime but the ONNX model cannot be used: {why_not_onnx}; "
                             "use backend auto or torch")
    if requested != "auto":
        return requested, "chosen by predict.backend"
    if device.type != "cpu":
        return "torch", f"auto: PyTorch on {device} (ONNX Runtime runs on the CPU here)"
    if onnx_usable:
        return "onnxruntime", "auto: ONNX Runtime, the fastest backend on a CPU"
    return "torch", f"auto: PyTorch channels_last, because ONNX Runtime cannot be used ({why_not_onnx})"
