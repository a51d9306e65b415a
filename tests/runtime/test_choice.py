"""The one backend rule and the one parity measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from image_classification.errors import ParameterError
from image_classification.parameters.predict import PredictConfig
from image_classification.runtime.choice import choose_extraction_backend, select_backend, torch_device
from image_classification.runtime.parity import output_difference, parity_difference

CPU, GPU = torch.device("cpu"), torch.device("cuda")


# ----------------------------------------------------------------------------- the backend


def test_a_pass_and_predict_choose_by_the_same_rule():
    assert choose_extraction_backend("auto", CPU) == "onnxruntime"  # installed with the project
    assert choose_extraction_backend("auto", GPU) == select_backend("auto", GPU, onnx_usable=True)[0] == "torch"
    assert choose_extraction_backend("torch", CPU) == "torch"


def test_a_pass_refuses_onnxruntime_on_a_gpu_and_a_predict_only_backend_naming_runtime_backend():
    with pytest.raises(ParameterError, match="runtime.backend is onnxruntime but ONNX Runtime cannot be used: "
                                             "runtime.device is cuda"):
        choose_extraction_backend("onnxruntime", GPU)
    with pytest.raises(ParameterError, match="runtime.backend must be one of auto, onnxruntime, torch, got 'torch_nchw'"):
        choose_extraction_backend("torch_nchw", CPU)


def test_the_device_is_named_by_runtime_device():
    assert torch_device({"device": "cpu"}) == CPU
    with pytest.raises(ParameterError, match="runtime.device must be auto, cpu or cuda"):
        torch_device({"device": "tpu"})


# ----------------------------------------------------------------------------- the parity measure


def test_parity_is_the_absolute_difference_for_scores_and_relative_for_larger_outputs():
    score = np.array([0.2, 0.9], np.float32)
    assert output_difference(score + np.float32(5e-5), score) == pytest.approx(5e-5, rel=1e-3)
    features = torch.tensor([[30.0, -3.0]])
    assert output_difference(features + torch.tensor([[3e-3, 0.0]]), features) == pytest.approx(1e-4, rel=1e-3)
    assert parity_difference([score, features], [score, features]) == 0.0
    assert parity_difference([score + np.float32(1e-3), features], [score, features]) == pytest.approx(1e-3, rel=1e-3)


def test_a_float64_score_is_compared_in_float64():
    served = np.array([0.25, 0.5])
    assert output_difference(served + 1e-9, served) == pytest.approx(1e-9, rel=1e-6)


# ----------------------------------------------------------------------------- one tolerance


def test_predict_parity_tolerance_is_refused_with_its_new_name():
    with pytest.raises(ParameterError, match="predict.parity_tolerance .* is now runtime.parity_tolerance"):
        PredictConfig(parity_tolerance=1e-3)
