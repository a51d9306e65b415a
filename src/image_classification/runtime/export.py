"""The exportable modules of :mod:`.graphs` as ONNX bytes, and what an exported model says about itself.

An ONNX file is a protobuf of operators and weights: loading one never unpickles anything.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn

from image_classification.model import ImageClassifier
from image_classification.runtime.graphs import (
    FEATURE_OUTPUTS,
    INPUT_NAME,
    PATCH_OUTPUT,
    FeatureModel,
    ScoringModel,
    output_names,
)

CHECKPOINT_KEY = "checkpoint_sha256"
"""ONNX metadata key naming the checkpoint a model was exported from."""


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


def export_onnx(classifier: ImageClassifier, input_size: int, properties: dict[str, str],
                opset: int = 17, patch_grid: int = 0, fine: bool = True) -> bytes:
    """The classifier as ONNX bytes (:class:`~.graphs.ScoringModel`), any batch size, with ``properties``
    in its metadata; with ``patch_grid``, patch vectors as a fourth output and (with ``fine``) fine patch
    vectors as a fifth."""
    return export_module(ScoringModel(classifier.eval(), input_size, patch_grid, fine), input_size,
                         output_names(patch_grid, fine), properties, opset)


def export_feature_model(backbone: nn.Sequential, input_size: int, head_input: str = "pooled",
                         patch_grid: int = 0, opset: int = 17) -> bytes:
    """:class:`~.graphs.FeatureModel` as ONNX bytes, any batch size."""
    module = FeatureModel(copy.deepcopy(backbone).cpu().float(), input_size, head_input, patch_grid).eval()
    return export_module(module, input_size, list(FEATURE_OUTPUTS[: 4 if module.taps[0] else 2]), opset=opset)


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


def serving_mismatch(onnx_model: bytes, patch_grid: int, fine: bool = True) -> str:
    """Why an export cannot give what an operating point serves from it ("" when it can): the outputs
    of :func:`~.graphs.output_names`, with patch vectors on ``patch_grid`` (and fine ones with ``fine``)
    when the point reads them."""
    outputs = onnx_outputs(onnx_model)
    missing = [name for name in output_names(patch_grid, fine) if name not in outputs]
    if missing:
        return f"it has no output {', '.join(missing)} (it has {', '.join(outputs)})"
    if patch_grid and outputs[PATCH_OUTPUT][1:2] not in ((None,), (patch_grid ** 2,)):
        return (f"its patch vectors hold {outputs[PATCH_OUTPUT][1]} patches per image, the operating point reads "
                f"a {patch_grid}x{patch_grid} grid")
    return ""
