"""Parameters shared by several pipelines (``conf/base/parameters.yml``): the ``runtime`` block."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from image_classification.distributed import DaskSettings
from image_classification.errors import ParameterError
from image_classification.runtime.choice import EXTRACTION_BACKENDS, check_device_name
from image_classification.runtime.parity import PARITY_TOLERANCE


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how tensors are computed; Kedro checks it before any node runs.

    Attributes:
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda[:N]``; whether a GPU is there is
            found when a node resolves it (:func:`~image_classification.runtime.choice.torch_device`).
        threads: PyTorch CPU threads; None keeps PyTorch's default (all cores).
        batch_size: images per batch when running the backbone.
        workers: processes decoding images while the model computes (0: in the main process).
        backend: how the passes over images run (:mod:`~image_classification.runtime.fast_path`):
            ``auto``, ``onnxruntime`` or ``torch``.
        parity_tolerance: the one tolerance of every ONNX Runtime vs PyTorch check, predict's export
            included (:mod:`~image_classification.runtime.parity`); 0 or more.
        dask: where the maps over images run, as
            :class:`~image_classification.distributed.DaskSettings` reads it; kept as given (a dict
            or None), so that ``params:runtime.dask`` reads the same with or without this class.
    """

    device: str = "auto"
    threads: int | None = None
    batch_size: int = 64
    workers: int = 2
    backend: str = "auto"
    parity_tolerance: float = PARITY_TOLERANCE
    dask: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device_name(str(self.device)))
        if self.threads is not None:
            object.__setattr__(self, "threads", int(self.threads))
        for name in ("batch_size", "workers"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "parity_tolerance", float(self.parity_tolerance))
        if self.threads is not None and self.threads < 1:
            raise ParameterError(f"runtime.threads must be at least 1 or null (PyTorch's default), got {self.threads}")
        if self.batch_size < 1 or self.workers < 0:
            raise ParameterError(f"runtime.batch_size must be at least 1 and runtime.workers at least 0, got "
                                 f"{self.batch_size} and {self.workers}")
        if self.backend not in EXTRACTION_BACKENDS:
            raise ParameterError(f"runtime.backend must be one of {', '.join(EXTRACTION_BACKENDS)}, "
                                 f"got '{self.backend}'")
        if not self.parity_tolerance >= 0:
            raise ParameterError(f"runtime.parity_tolerance must be 0 or more, got {self.parity_tolerance}")
        DaskSettings.from_params(self.dask)  # a bad runtime.dask stops the run here, naming the setting

    @classmethod
    def from_params(cls, params: RuntimeConfig | Mapping | None) -> RuntimeConfig:
        """From the ``runtime`` block: already this class, or a mapping (code that calls a node
        directly; keys it lacks take the defaults, keys it does not know are refused)."""
        if isinstance(params, cls):
            return params
        params = dict(params or {})
        unknown = sorted(set(params) - {field.name for field in fields(cls)})
        if unknown:
            raise ParameterError(f"runtime has unknown settings {unknown}; see conf/base/parameters.yml")
        return cls(**params)

    @property
    def dask_settings(self) -> DaskSettings:
        return DaskSettings.from_params(self.dask)
