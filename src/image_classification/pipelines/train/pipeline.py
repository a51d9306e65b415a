"""Wiring of the train pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import extract_features, plot_training_curves, train_classifier


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=extract_features,
                inputs=["image_index", "params:model", "params:runtime", "params:seed", "params:train"],
                outputs="backbone_features",
                name="extract_features",
            ),
            Node(
                func=train_classifier,
                inputs=["backbone_features", "image_index", "params:model", "params:train",
                        "params:runtime", "params:seed", "training_state"],
                outputs=["model_checkpoint", "training_history"],
                name="train_classifier",
            ),
            Node(
                func=plot_training_curves,
                inputs=["training_history", "model_checkpoint"],
                outputs="training_curves",
                name="plot_training_curves",
            ),
        ],
        tags="train",
    )
