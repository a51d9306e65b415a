"""Wiring of the evaluate pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    choose_operating_point,
    cross_validate_candidates,
    draw_defect_map_gallery,
    draw_error_gallery,
    list_errors,
    measure_performance,
    plot_confusion_matrices,
    plot_precision_recall,
    plot_roc,
    plot_score_histograms,
    score_candidates,
    score_images,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=score_images,
                inputs=["scored_index", "model_checkpoint", "image_index"],
                outputs="model_scores",
                name="score_images",
            ),
            Node(
                func=cross_validate_candidates,
                inputs=["backbone_features", "image_index", "params:train", "params:evaluate", "params:seed"],
                outputs=["cross_validation", "out_of_fold_scores", "fold_models"],
                name="cross_validate_candidates",
            ),
            Node(
                func=score_candidates,
                inputs=["model_scores", "backbone_features", "image_index", "params:evaluate", "params:seed",
                        "out_of_fold_scores", "fold_models"],
                outputs=["evaluation_scores", "scorer_fits", "scorer_models"],
                name="score_candidates",
            ),
            Node(
                func=choose_operating_point,
                inputs=["evaluation_scores", "model_checkpoint", "params:evaluate", "out_of_fold_scores",
                        "params:seed", "scorer_models"],
                outputs="operating_point",
                name="choose_operating_point",
            ),
            Node(
                func=measure_performance,
                inputs=["evaluation_scores", "operating_point", "scorer_fits", "params:evaluate", "params:seed"],
                outputs="evaluation_metrics",
                name="measure_performance",
            ),
            Node(
                func=list_errors,
                inputs=["evaluation_scores", "operating_point"],
                outputs="gap_analysis",
                name="list_errors",
            ),
            Node(
                func=plot_precision_recall,
                inputs=["evaluation_scores", "evaluation_metrics"],
                outputs=["precision_recall_plot", "precision_recall_figure"],
                name="plot_precision_recall",
            ),
            Node(
                func=plot_roc,
                inputs=["evaluation_scores", "evaluation_metrics"],
                outputs=["roc_plot", "roc_figure"],
                name="plot_roc",
            ),
            Node(
                func=plot_score_histograms,
                inputs=["evaluation_scores", "operating_point"],
                outputs=["score_histogram_plot", "score_histogram_figure"],
                name="plot_score_histograms",
            ),
            Node(
                func=plot_confusion_matrices,
                inputs="evaluation_metrics",
                outputs="confusion_matrix_figure",
                name="plot_confusion_matrices",
            ),
            Node(
                func=draw_error_gallery,
                inputs=["gap_analysis", "operating_point", "params:evaluate", "backbone_features", "image_index"],
                outputs="error_gallery",
                name="draw_error_gallery",
            ),
            Node(
                func=draw_defect_map_gallery,
                inputs=["evaluation_scores", "operating_point", "backbone_features", "image_index",
                        "params:evaluate"],
                outputs=["defect_map_gallery", "defect_map_preview"],
                name="draw_defect_map_gallery",
            ),
        ],
        tags="evaluate",
    )
