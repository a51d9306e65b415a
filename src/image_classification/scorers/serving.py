"""The served score: the operating point's candidate, rebuilt from the plain numbers it carries, scoring
new images; what predict, zero_shot, embedding_analysis and the MLflow model apply the threshold to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from image_classification.artefacts import FeatureCache, ScoredIndex
from image_classification.operating_point import OperatingPoint
from image_classification.errors import DataError
from image_classification.scorers.base import SCORERS, Features, LazyRows, Scorer


@dataclass(frozen=True)
class ServedScore:
    """An operating point with its scorer, parsed once (not once per scored batch)."""

    point: OperatingPoint
    scorer: Scorer
    # the operating point's map scorer, if it carries one: a locating score beside the served score
    # (evaluate.defect_map_from), or a patch score explaining a served score that reads no patches
    map_beside: Scorer | None = None

    @classmethod
    def of(cls, point: OperatingPoint | dict) -> ServedScore:
        """The scorer ``point`` serves; a :class:`DataError` when this version cannot serve it."""
        point = point if isinstance(point, OperatingPoint) else OperatingPoint.from_payload(point)
        map_beside = None
        if point.defect_map:
            name = point.defect_map.get("candidate")
            if name not in SCORERS or "patches" not in SCORERS[name].reads:
                raise DataError(f"operating_point's defect map is drawn by '{name}', which this version cannot draw a "
                                "map with; run the evaluate pipeline")
            map_beside = SCORERS[name].from_payload(point.defect_map.get("weights") or {})
        return cls(point, cls._served(point), map_beside)

    @staticmethod
    def _served(point: OperatingPoint) -> Scorer:
        kind = SCORERS.get(point.candidate)
        if kind is None or not kind.servable:
            servable = ", ".join(name for name, scorer in SCORERS.items() if scorer.servable)
            raise DataError(f"operating_point is for candidate '{point.candidate}', which this version cannot serve "
                            f"(only {servable}); run the evaluate pipeline")
        return kind.from_payload(point.served_weights or {})

    @property
    def candidate(self) -> str:
        return self.point.candidate

    @property
    def threshold(self) -> float:
        return self.point.threshold

    def threshold_for(self, checkpoint) -> float:
        """The threshold, if it was chosen for this checkpoint (:meth:`OperatingPoint.threshold_for`)."""
        return self.point.threshold_for(checkpoint)

    def predicted_labels(self, scores: np.ndarray) -> pd.Series:
        return self.point.predicted_labels(scores)

    def to_payload(self) -> dict:
        return self.point.to_payload()

    @property
    def patch_grid(self) -> int:
        """Patches per side the served score reads (0: it reads none)."""
        return self.scorer.patch_grid

    def scores(self, model_scores: np.ndarray, pooled: np.ndarray | torch.Tensor | None,
               patches: np.ndarray | torch.Tensor | None = None,
               fine_patches: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """The scores the threshold applies to, from the model's own scores, the pooled features and the
        (N, grid², C) patch vectors of the same images, as the served candidate reads them; NaN wherever
        the model's score is NaN (an unreadable image)."""
        model_scores = np.asarray(model_scores, dtype=np.float64)
        readable = ~np.isnan(model_scores)
        for what, given in (("pooled", pooled), ("patches", patches)):
            if what in self.scorer.reads and given is None:
                raise DataError(f"the operating point is the {self.candidate}'s, which needs "
                                f"{'pooled features' if what == 'pooled' else 'patch vectors'}; none were given")
        if isinstance(pooled, torch.Tensor):
            pooled = pooled.float().numpy()
        if patches is not None:
            patches = torch.as_tensor(patches)
            if self.patch_grid and patches.shape[1:2] != (self.patch_grid ** 2,):
                raise DataError(f"the served {self.candidate.replace('_', ' ')} reads a {self.patch_grid}x"
                                f"{self.patch_grid} patch grid, but the patch vectors given hold {patches.shape[1]} "
                                "patches per image; run train and evaluate again with one train.patch_grid")
        rows = np.flatnonzero(readable)
        features = Features(scores={"model": model_scores}, pooled=None if pooled is None else np.asarray(pooled),
                            patches=patches, fine_patches=None if fine_patches is None else torch.as_tensor(fine_patches))
        scores = np.full(len(model_scores), np.nan)
        if len(rows):
            scores[rows] = self.scorer.score_samples(features.take(rows))
        return scores

    @property
    def map_scorer(self) -> Scorer | None:
        """The scorer that draws the defect maps: the operating point's map beside the served score
        (a locating score, or the patch score explaining a served score that reads no patches), else
        the served one when it reads patches (None: no map)."""
        if self.map_beside is not None:
            return self.map_beside
        return self.scorer if self.patch_grid else None

    @property
    def map_role(self) -> str:
        """How the defect maps relate to the served score, the one place every label of them is worded
        from: ``own`` (the served score's), ``beside`` (a locating score's beside a served score that
        reads patches, which decides), ``explains`` (a patch score's beside one that reads none), or
        ``""`` (no map)."""
        if self.map_scorer is None:
            return ""
        if self.map_scorer is self.scorer:
            return "own"
        return "beside" if self.patch_grid else "explains"

    @property
    def map_source(self) -> str:
        """Whose map :meth:`defect_maps` draws: the served candidate's name; a locating score's
        "<name> (locates defects beside the <candidate>, which decides)"; or an explaining score's
        "<name> (explains the <candidate>, which reads no patches)"; "" when none."""
        role = self.map_role
        if not role:
            return ""
        if role == "own":
            return self.candidate
        if role == "beside":
            return f"{self.map_beside.name} (locates defects beside the {self.candidate}, which decides)"
        return f"{self.map_beside.name} (explains the {self.candidate}, which reads no patches)"

    @property
    def map_grid(self) -> int:
        """Patches per side of the defect maps (0: none)."""
        return self.map_scorer.patch_grid if self.map_scorer is not None else 0

    @property
    def pass_grid(self) -> int:
        """Patches per side the backbone's pass must output: for the served score, or else for its map."""
        return self.patch_grid or self.map_grid

    def pass_fine(self, maps: bool = True) -> bool:
        """Whether the backbone's pass must output fine patch vectors: the served score reads them, or (when
        ``maps`` are drawn) the map scorer does."""
        readers = (self.scorer, self.map_scorer) if maps else (self.scorer,)
        return any(scorer is not None and "fine_patches" in scorer.reads for scorer in readers)

    @property
    def map_units(self) -> str:
        """What one value of :meth:`defect_maps` means; "" when no map is drawn."""
        return self.map_scorer.map_units if self.map_scorer is not None else ""

    def defect_maps(self, model_scores: np.ndarray, patches: np.ndarray | torch.Tensor | None,
                    fine_patches: np.ndarray | torch.Tensor | LazyRows | None = None) -> np.ndarray | None:
        """(N, grid²) float32 defect map of every image (:mod:`image_classification.defect_maps`) from its
        patch vectors and fine patch vectors, NaN rows where the model's score is NaN (an unreadable
        image); None when no map is drawn."""
        scorer = self.map_scorer
        if scorer is None:
            return None
        if patches is None:
            raise DataError(f"the {self.map_source.replace('_', ' ')} draws its defect map from patch vectors; none "
                            "were given")
        patches = torch.as_tensor(patches)
        if patches.shape[1:2] != (self.map_grid ** 2,):
            raise DataError(f"the {self.map_source.replace('_', ' ')} draws its map on a {self.map_grid}x{self.map_grid} "
                            f"patch grid, but the patch vectors given hold {patches.shape[1]} patches per image; run "
                            "train and evaluate again with one train.patch_grid")
        rows = np.flatnonzero(~np.isnan(np.asarray(model_scores, dtype=np.float64)))
        maps = np.full((len(model_scores), self.map_grid ** 2), np.nan, dtype=np.float32)
        if len(rows):
            maps[rows] = scorer.defect_map(Features(patches=patches, fine_patches=fine_patches).take(rows))
        return maps

    def scores_of_index(self, scored: ScoredIndex, image_index: pd.DataFrame,
                        backbone_features: dict | None) -> np.ndarray:
        """The served score of every indexed image from the score stage's pass, reading the patch
        vectors from the feature cache (``backbone_features``) when the served score needs them."""
        if not self.patch_grid:
            return self.scores(scored.score, scored.pooled)
        cache = self._index_patches(image_index, backbone_features)
        return self.scores(scored.score, scored.pooled, cache.patches, cache.fine_patches)

    def defect_maps_of_index(self, image_index: pd.DataFrame, backbone_features: dict | None,
                             rows: np.ndarray) -> np.ndarray | None:
        """(len(rows), grid²) defect maps of the indexed images at positions ``rows``, from the patch
        vectors of the feature cache (``backbone_features``); NaN rows for an image the backbone could
        not read; None when no map is drawn (:attr:`map_source`)."""
        if not self.map_units:
            return None
        cache = self._index_patches(image_index, backbone_features)
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        model_scores = np.where(cache.readable[rows.numpy()], 0.0, np.nan)  # only whether each image was read counts
        fine = cache.fine_patches
        return self.defect_maps(model_scores, cache.patches[rows], None if fine is None else LazyRows.of(fine, rows))

    def _index_patches(self, image_index: pd.DataFrame, backbone_features: dict | None) -> FeatureCache:
        """The feature cache, checked against the index and the served backbone, holding patch vectors."""
        if backbone_features is None:
            raise DataError(f"the operating point serves the {self.candidate.replace('_', ' ')}, which reads "
                            "backbone_features; none were given")
        cache = FeatureCache.from_payload(backbone_features)
        cache.check(image_index, self.point.backbone or cache.backbone, cache.head_input_mode)
        if cache.patches is None:
            raise DataError(f"the operating point serves the {self.candidate.replace('_', ' ')}, but "
                            "backbone_features holds no patch vectors (train.patch_grid is 0); run train and "
                            "evaluate again")
        return cache
