"""Wiring of the zero_shot pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    decide_images,
    measure_detectors,
    plot_anomaly_scores,
    plot_detector_comparison,
    plot_embedding_overlay,
    score_anomalies,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=score_anomalies,
                inputs=["scored_index", "model_checkpoint", "image_index", "params:zero_shot", "params:seed",
                        "operating_point", "backbone_features"],
                outputs=["anomaly_scores", "anomaly_thresholds", "anomaly_detector"],
                name="score_anomalies",
            ),
            Node(
                func=decide_images,
                inputs=["anomaly_scores", "anomaly_thresholds", "operating_point", "params:zero_shot"],
                outputs="zero_shot_decisions",
                name="decide_images",
            ),
            Node(
                func=measure_detectors,
                inputs=["anomaly_scores", "zero_shot_decisions", "anomaly_thresholds", "operating_point",
                        "params:zero_shot"],
                outputs="zero_shot_metrics",
                name="measure_detectors",
            ),
            Node(
                func=plot_embedding_overlay,
                inputs=["pca_projection", "zero_shot_decisions"],
                outputs=["zero_shot_embedding_figure", "zero_shot_embedding_3d"],
                name="plot_embedding_overlay",
            ),
            Node(
                func=plot_anomaly_scores,
                inputs=["zero_shot_decisions", "zero_shot_metrics"],
                outputs="anomaly_score_figure",
                name="plot_anomaly_scores",
            ),
            Node(
                func=plot_detector_comparison,
                inputs="zero_shot_metrics",
                outputs="detector_comparison_figure",
                name="plot_detector_comparison",
            ),
        ],
        tags="zero_shot",
    )
