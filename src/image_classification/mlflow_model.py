"""The model as MLflow logs it: a checkpoint and the operating point chosen for it, loadable with
``mlflow.pyfunc.load_model("models:/image_classification/<version>")`` to score image files.

MLflow loads this file as code ("models from code"), so nothing is unpickled: the checkpoint is a
safetensors file and the operating point a JSON file, both logged beside it as artifacts.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import torch

from image_classification.artefacts import Checkpoint
from image_classification.datasets import SafetensorsDataset
from image_classification.runtime.scoring import model_outputs
from image_classification.scorers import ServedScore


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Scores a table with a ``path`` column: probability of valid (of the candidate the operating point
    serves: the model, the baseline on the pooled features or the patch classifier on the patch
    vectors), the label at the threshold and the operating point's defect map, where it has one."""

    def load_context(self, context) -> None:
        self.checkpoint = Checkpoint.from_payload(SafetensorsDataset(filepath=context.artifacts["checkpoint"]).load())
        with open(context.artifacts["operating_point"], encoding="utf-8") as file:
            self.operating_point = ServedScore.of(json.load(file))
        self.threshold = self.operating_point.threshold_for(self.checkpoint)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        paths = [str(path) for path in model_input["path"]]
        outputs = model_outputs(self.checkpoint.model(), paths, self.checkpoint.spec,
                                torch.device("cpu"), patch_grid=self.operating_point.pass_grid,
                                fine=self.operating_point.pass_fine())
        readable = np.array([not error for error in outputs["errors"]], dtype=bool)
        scores = self.operating_point.scores(np.where(readable, outputs["score"], np.nan), outputs["features"],
                                             outputs.get("patches"), outputs.get("fine_patches"))
        maps = self.operating_point.defect_maps(scores, outputs.get("patches"), outputs.get("fine_patches"))
        rows = [None] * len(paths) if maps is None else [None if np.isnan(row).all() else row.tolist() for row in maps]
        return pd.DataFrame({
            "path": paths,
            "score": scores,
            "predicted_label": self.operating_point.predicted_labels(scores).to_numpy(),
            # where the defect is, as predict writes it (docs/defect-maps.md); empty when the score reads no patches
            "defect_map": rows,
            "defect_map_grid": [None if row is None else self.operating_point.map_grid for row in rows],
            "error": [error or None for error in outputs["errors"]],
        })


mlflow.models.set_model(ImageClassifierModel())
