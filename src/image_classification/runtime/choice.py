"""The device, and the one rule that picks a backend: ONNX Runtime or PyTorch.

Two settings name a backend. ``runtime.backend`` (auto, onnxruntime, torch) says how train's
feature extraction, the score stage's pass over the files and fine-tuning's frozen blocks run;
``predict.backend`` (auto, onnxruntime, torch, torch_nchw) says how predict serves. Both are read
by :func:`select_backend`: ``auto`` takes ONNX Runtime on a CPU where it can be used, else PyTorch;
an explicit choice is honoured or refused with a :class:`~image_classification.errors.ParameterError`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import torch

from image_classification.errors import ParameterError

BACKENDS = ("onnxruntime", "torch", "torch_nchw")
"""predict's backends: ONNX Runtime (CPU), PyTorch eager channels_last, plain PyTorch eager (NCHW)."""
PASS_BACKENDS = ("onnxruntime", "torch")
"""The backends of a pass over images (``runtime.backend``): what is not trained runs in ONNX Runtime or PyTorch."""
EXTRACTION_BACKENDS = ("auto", *PASS_BACKENDS)
"""The values ``runtime.backend`` takes."""
DEVICES = "auto, cpu or cuda[:N]"


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime is installed, without importing it."""
    return importlib.util.find_spec("onnxruntime") is not None


def check_device_name(name: str) -> str:
    """``name`` if it names a device this project runs on (auto, cpu, cuda[:N]), else a ParameterError."""
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise ParameterError(f"runtime.device must be {DEVICES}, got '{name}'")
    return name


def torch_device(runtime: Mapping[str, Any] | Any) -> torch.device:
    """The device named by ``runtime.device`` (auto/cpu/cuda), with ``runtime.threads`` applied.

    ``runtime`` is the typed ``runtime`` block (:class:`~image_classification.parameters.runtime.RuntimeConfig`)
    or any mapping with ``device`` and ``threads``.
    """
    if isinstance(runtime, Mapping):
        name, threads = str(runtime.get("device", "auto")), runtime.get("threads")
    else:
        name, threads = str(runtime.device), runtime.threads
    if threads:
        torch.set_num_threads(int(threads))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"runtime.device is '{name}' but PyTorch sees no CUDA GPU; use auto or cpu")
    return torch.device(check_device_name(name))


def select_backend(requested: str, device: torch.device, onnx_usable: bool, why_not_onnx: str = "",
                   setting: str = "predict.backend", choices: tuple[str, ...] = BACKENDS) -> tuple[str, str]:
    """Which backend to run, and why: the one rule behind ``predict.backend`` and ``runtime.backend``.

    ``auto`` takes ONNX Runtime on a CPU when it is usable (for predict: installed, the export of
    this checkpoint, matching PyTorch; for a pass: installed), else PyTorch channels_last; on a GPU
    it takes PyTorch, since this project's ONNX Runtime runs on the CPU only. An explicit choice
    among ``choices`` is honoured, or refused (naming ``setting``) when it is ONNX Runtime and that
    cannot be used (``why_not_onnx``).
    """
    if requested not in ("auto", *choices):
        raise ParameterError(f"{setting} must be one of auto, {', '.join(choices)}, got '{requested}'")
    if requested == "onnxruntime" and not onnx_usable:
        raise ParameterError(f"{setting} is onnxruntime but ONNX Runtime cannot be used: {why_not_onnx}; "
                             f"use {setting} auto or torch")
    if requested != "auto":
        return requested, f"chosen by {setting}"
    if device.type != "cpu":
        return "torch", f"auto: PyTorch on {device} (ONNX Runtime runs on the CPU here)"
    if onnx_usable:
        return "onnxruntime", "auto: ONNX Runtime, the fastest backend on a CPU"
    return "torch", f"auto: PyTorch channels_last, because ONNX Runtime cannot be used ({why_not_onnx})"


def choose_extraction_backend(requested: str, device: torch.device) -> str:
    """:func:`select_backend` for a pass over images (``runtime.backend``): ONNX Runtime is usable
    on a CPU where it is installed."""
    if device.type != "cpu":
        why = f"runtime.device is {device} and this project runs ONNX Runtime on the CPU only"
    else:
        why = "" if onnxruntime_available() else "it is not installed"
    return select_backend(requested, device, not why, why, "runtime.backend", PASS_BACKENDS)[0]
