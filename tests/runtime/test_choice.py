"""The one backend rule, the one parity measure and the typed ``runtime`` block Kedro checks before a run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.validation.parameter_validator import ParameterValidator

from image_classification.distributed import DaskSettings
from image_classification.errors import ParameterError
from image_classification.parameters.predict import PredictConfig
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.pipelines import data_prep, predict, score, train
from image_classification.runtime.choice import choose_extraction_backend, select_backend, torch_device
from image_classification.runtime.parity import PARITY_TOLERANCE, output_difference, parity_difference

from ..conftest import REPO_ROOT

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def conf_parameters() -> dict:
    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env="base",
                               merge_strategy={"parameters": "soft"})
    return loader["parameters"]


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


def test_the_device_is_read_from_the_typed_block_or_a_mapping():
    assert torch_device(RuntimeConfig(device="cpu")) == torch_device({"device": "cpu"}) == CPU
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


# ----------------------------------------------------------------------------- the typed runtime block


def test_the_defaults_are_the_configured_runtime_block():
    runtime = conf_parameters()["runtime"]
    assert RuntimeConfig(**runtime) == RuntimeConfig(dask=runtime["dask"])
    assert RuntimeConfig().parity_tolerance == PARITY_TOLERANCE == runtime["parity_tolerance"]
    assert "parity_tolerance" not in conf_parameters()["predict"]


@pytest.mark.parametrize("values, named", [({"device": "tpu"}, "runtime.device"),
                                           ({"threads": 0}, "runtime.threads"),
                                           ({"batch_size": 0}, "runtime.batch_size"),
                                           ({"workers": -1}, "runtime.workers"),
                                           ({"backend": "torch_nchw"}, "runtime.backend must be one of"),
                                           ({"parity_tolerance": -1e-4}, "runtime.parity_tolerance"),
                                           ({"dask": {"workers": 0}}, "runtime.dask.workers")])
def test_bad_runtime_settings_name_the_setting(values, named):
    with pytest.raises(ParameterError, match=named):
        RuntimeConfig(**values)


def test_a_node_called_with_a_dict_gets_the_typed_block_and_unknown_keys_are_refused():
    runtime = RuntimeConfig.from_params({"device": "cpu", "batch_size": "8", "parity_tolerance": 0})
    assert (runtime.batch_size, runtime.parity_tolerance, runtime.workers) == (8, 0.0, 2)
    assert RuntimeConfig.from_params(runtime) is runtime
    assert runtime.dask_settings == DaskSettings()
    with pytest.raises(ParameterError, match="unknown settings \\['parity_images'\\]"):
        RuntimeConfig.from_params({"parity_images": 16})


def test_predict_parity_tolerance_is_refused_with_its_new_name():
    with pytest.raises(ParameterError, match="predict.parity_tolerance .* is now runtime.parity_tolerance"):
        PredictConfig(parity_tolerance=1e-3)


def test_kedro_types_the_runtime_block_whatever_the_order_of_the_pipelines_run():
    """train, score and predict take the typed block; data_prep and predict also read runtime.dask,
    which is therefore left untyped: Kedro cannot type a block and one of its keys at once."""
    pipelines = {"data_prep": data_prep.create_pipeline(), "train": train.create_pipeline(),
                 "score": score.create_pipeline(), "predict": predict.create_pipeline()}
    raw = conf_parameters()
    for order in itertools.permutations(pipelines):
        validated = ParameterValidator({name: pipelines[name] for name in order}).validate_raw_params(raw)
        assert validated["runtime"] == RuntimeConfig(**raw["runtime"]), order
    bad = {**raw, "runtime": {**raw["runtime"], "backend": "tensorrt"}}
    with pytest.raises(Exception, match="runtime.backend must be one of"):
        ParameterValidator({"predict": pipelines["predict"]}).validate_raw_params(bad)
