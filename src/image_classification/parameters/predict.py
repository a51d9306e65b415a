"""Parameters of the predict pipeline (``conf/base/parameters_predict.yml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from image_classification.errors import ParameterError
from image_classification.runtime.choice import BACKENDS
from image_classification.image_files import ImageLimits
from image_classification.sources import UNLABELLED_KINDS, current_kind


@dataclass(frozen=True)
class PredictConfig:
    """What to score and how; Kedro checks it before any node runs.

    Attributes:
        source: ``{kind: folder_tree, root: ...}`` (every file below ``root``; ``folder`` is its
            deprecated old name), ``{kind: csv, csv: ...}``
            (a CSV with a ``path`` column) or ``{kind: demo}`` (the built-in demo's images).
        backend: ``auto`` (the fastest usable one), ``onnxruntime``, ``torch`` (channels_last) or
            ``torch_nchw`` (the plain eager baseline).
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (PyTorch backends only).
        batch_size: images scored together.
        workers: processes decoding images while the model scores (0: in the main process).
        threads: CPU threads per backend (``onnxruntime``, ``torch``); null: the library default.
        parity_images: readable images on which the export is compared with PyTorch (within
            ``runtime.parity_tolerance``, the one tolerance of every such check).
        parity_tolerance: no longer a setting of its own: set, it stops the run with the fix.
        opset: the ONNX operator set the model is exported with.
        max_file_bytes: larger files get an error row unread; a read never goes past this.
        read_timeout_s: per remote file: a stalled read becomes that file's error row.
        defect_maps: write each image's defect map (``defect_map``, ``defect_map_grid``), drawn by the
            score ``evaluate.defect_map_from`` names (:mod:`image_classification.defect_maps`); false
            leaves them empty.
        save_overlays: also draw every scored image with its map over it, as a PNG in
            ``prediction_overlays`` (one per image, this run's only).
        overlay_max_side: an overlay's longer side, in pixels (larger images are drawn scaled down).
    """

    source: dict = field(default_factory=lambda: {"kind": "demo"})
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    workers: int = 2
    threads: dict = field(default_factory=dict)
    parity_images: int = 16
    parity_tolerance: float | None = None
    opset: int = 17
    max_file_bytes: int = ImageLimits.max_file_bytes
    read_timeout_s: float = ImageLimits.read_timeout_s
    defect_maps: bool = True
    save_overlays: bool = False
    overlay_max_side: int = 1024

    def __post_init__(self) -> None:
        kind = current_kind(self.source.get("kind"), "predict.source.kind")
        object.__setattr__(self, "source", {**self.source, "kind": kind})
        if self.source["kind"] not in UNLABELLED_KINDS:
            raise ParameterError(f"predict.source.kind must be one of {', '.join(UNLABELLED_KINDS)}, "
                                 f"got '{self.source['kind']}'")
        needed = {"folder_tree": "root", "csv": "csv"}.get(self.source["kind"])
        if needed and not self.source.get(needed):
            raise ParameterError(f"predict.source.{needed} must be set when predict.source.kind is '{self.source['kind']}'")
        if self.backend not in ("auto", *BACKENDS):
            raise ParameterError(f"predict.backend must be auto or one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if self.parity_tolerance is not None:
            raise ParameterError(f"predict.parity_tolerance ({self.parity_tolerance}) is now runtime.parity_tolerance, "
                                 "the one tolerance of every ONNX Runtime vs PyTorch check (conf/base/parameters.yml); "
                                 "set that and remove predict.parity_tolerance")
        if self.batch_size < 1 or self.workers < 0 or self.parity_images < 1:
            raise ParameterError("predict.batch_size and parity_images must be at least 1, workers at least 0")
        unknown = sorted(set(self.threads) - {"onnxruntime", "torch"})
        if unknown:
            raise ParameterError(f"predict.threads has unknown backends {unknown}; use onnxruntime and torch")
        if any(value is not None and int(value) < 1 for value in self.threads.values()):
            raise ParameterError(f"predict.threads must be at least 1 or null (the default), got {self.threads}")
        if self.save_overlays and not self.defect_maps:
            raise ParameterError("predict.save_overlays draws the defect maps, which predict.defect_maps turns off; "
                                 "set predict.defect_maps true or predict.save_overlays false")
        if self.overlay_max_side < 16:
            raise ParameterError(f"predict.overlay_max_side must be at least 16 pixels, got {self.overlay_max_side}")
        if self.max_file_bytes < 1 or not self.read_timeout_s > 0:
            raise ParameterError(f"predict.max_file_bytes must be at least 1 and read_timeout_s positive, got "
                                 f"{self.max_file_bytes} and {self.read_timeout_s}")

    @property
    def read_limits(self) -> ImageLimits:
        """How files are read: any decodable size is scored (only data_prep holds a minimum)."""
        return ImageLimits(min_side=1, max_file_bytes=self.max_file_bytes, read_timeout_s=self.read_timeout_s)

    def threads_for(self, backend: str) -> int | None:
        """CPU threads for a backend (torch_nchw shares torch's)."""
        return self.threads.get("onnxruntime" if backend == "onnxruntime" else "torch")
