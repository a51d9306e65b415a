"""The embedding_analysis pipeline on its own after train: its catalog entries, written to a scratch folder."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from image_classification.pipelines.embedding_analysis import create_pipeline
from image_classification.pipelines.embedding_analysis.nodes import EmbeddingAnalysisConfig

from ...conftest import REPO_ROOT, base_catalog_config, catalog_entry

CONF = REPO_ROOT / "conf" / "base"
# backbone_features: the patch vectors, read when the operating point serves the patch classifier
UPSTREAM = {"scored_index", "model_checkpoint", "image_index", "operating_point", "backbone_features"}
PARAMETERS = {"params:embedding_analysis", "params:seed"}


def stage_catalog() -> dict:
    return base_catalog_config("catalog_embedding_analysis.yml")


def test_pipeline_needs_only_earlier_stages_outputs_and_writes_only_its_own_entries():
    pipeline = create_pipeline()
    assert pipeline.inputs() == UPSTREAM | PARAMETERS
    entries = stage_catalog()
    assert set(entries) <= pipeline.all_outputs()  # every entry is written by this pipeline
    persisted = {name for name in pipeline.all_outputs() if catalog_entry(name)}  # entries or figure factories
    assert pipeline.all_outputs() - persisted == {"pca_basis", "cluster_models"}  # small, in memory
    others = set()
    for path in CONF.glob("catalog*.yml"):
        if path.name != "catalog_embedding_analysis.yml":
            others |= set(yaml.safe_load(path.read_text()) or {})
    assert not others & set(entries)
    for name, entry in entries.items():
        assert entry["versioned"] is True, name
        assert entry["metadata"]["kedro-viz"]["layer"] in {"model_output", "reporting"}, name


def test_pipeline_runs_from_the_scored_index(tmp_path, tiny_checkpoint, tiny_scores, tiny_index, tiny_operating_point,
                                             tiny_features):
    entries = {name: entry | {"filepath": str(tmp_path / entry["filepath"])} for name, entry in stage_catalog().items()}
    for entry in entries.values():
        if entry["type"] == "matplotlib.MatplotlibDataset":
            entry["save_args"] = {"dpi": 30}  # the figures' content is tested elsewhere; small PNGs save faster
    catalog = DataCatalog.from_config(entries)
    inputs = {
        "model_checkpoint": tiny_checkpoint, "scored_index": tiny_scores, "image_index": tiny_index,
        "operating_point": tiny_operating_point, "backbone_features": tiny_features, "params:seed": 42,
        "params:embedding_analysis": EmbeddingAnalysisConfig(gmm_components=(1, 3), agglomerative_max_samples=12),
    }
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value)
    SequentialRunner().run(create_pipeline(), catalog)

    for entry in entries.values():
        written = list(Path(entry["filepath"]).glob("*/" + Path(entry["filepath"]).name))
        assert len(written) == 1, entry["filepath"]
    embeddings = catalog.load("image_embeddings")
    assert len(embeddings) == len(tiny_index)
    assert list(embeddings.columns) == ["path", "split", "label", "kind", "target", "score", "predicted_label", "error",
                                        *[f"e{i}" for i in range(50)]]
    metrics = catalog.load("clustering_metrics")
    assert metrics["labelled_points"] == 23  # 24 labelled images, one unreadable
    assert metrics["agglomerative"]["sampled"] is True and metrics["agglomerative"]["points"] == 12
    assert set(catalog.load("cluster_composition")["method"]) == {"gmm", "gmm_2", "agglomerative"}
    assert catalog.load("pca_projection")[["pc1", "pc2", "pc3"]].notna().sum().tolist() == [27, 27, 27]
    assert catalog.load("embedding_space_summary")["denser_class"] in {"valid", "invalid"}
    assert isinstance(catalog.load("pca_scatter_3d"), go.Figure)
