"""Wiring of the score pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import score_index


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=score_index,
                inputs=["model_checkpoint", "backbone_features", "image_index", "params:runtime"],
                outputs="scored_index",
                name="score_index",
            ),
        ],
        tags="score",
    )
