"""Wiring of the evaluate pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    choose_operating_point,
    cross_validate_candidates,
    draw_error_gallery,
    fit_baseline,
    join_scores,
    list_errors,
    measure_performance,
    plot_confusion_matrices,
    plot_precision_recall,
    plot_roc,
    plot_score_histograms,
    score_images,
    score_fold_stack,
    score_patches,
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
                func=fit_baseline,
                inputs=["backbone_features", "image_index", "params:evaluate", "params:seed"],
                outputs=["baseline_scores", "baseline_fit", "baseline_model"],
                name="fit_baseline",
            ),
            Node(
                func=score_patches,
                inputs=["backbone_features", "image_index", "params:evaluate", "params:seed", "out_of_fold_scores",
                        "patch_classifier_folds"],
                outputs=["patch_scores", "patch_fit", "patch_classifier_model"],
                name="score_patches",
            ),
            Node(
                func=cross_validate_candidates,
                inputs=["backbone_features", "image_index", "params:train", "params:evaluate", "params:seed"],
                outputs=["cross_validation", "out_of_fold_scores", "patch_classifier_folds", "fold_stack_model"],
                name="cross_validate_candidates",
            ),
            Node(
                func=score_fold_stack,
                inputs=["backbone_features", "image_index", "fold_stack_model", "out_of_fold_scores"],
                outputs="fold_stack_scores",
                name="score_fold_stack",
            ),
            Node(
                func=join_scores,
                inputs=["model_scores", "baseline_scores", "patch_scores", "image_index", "params:seed",
                        "fold_stack_scores"],
                outputs="evaluation_scores",
                name="join_scores",
            ),
            Node(
                func=choose_operating_point,
                inputs=["evaluation_scores", "model_checkpoint", "params:evaluate", "out_of_fold_scores",
                        "params:seed", "baseline_model", "patch_classifier_model", "fold_stack_model"],
                outputs="operating_point",
                name="choose_operating_point",
            ),
            Node(
                func=measure_performance,
                inputs=["evaluation_scores", "operating_point", "baseline_fit", "patch_fit", "params:evaluate",
                        "params:seed"],
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
                inputs=["gap_analysis", "operating_point", "params:evaluate"],
                outputs="error_gallery",
                name="draw_error_gallery",
            ),
        ],
        tags="evaluate",
    )
