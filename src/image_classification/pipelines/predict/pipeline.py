"""Wiring of the predict pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    check_onnx_parity,
    draw_overlays,
    export_onnx_model,
    format_for_spreadsheet,
    list_prediction_images,
    predict_images,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=list_prediction_images,
                inputs=["params:predict.source", "demo_images"],
                outputs="prediction_images",
                name="list_prediction_images",
            ),
            Node(
                func=export_onnx_model,
                inputs=["model_checkpoint", "operating_point", "params:predict"],
                outputs="onnx_model",
                name="export_onnx_model",
            ),
            Node(
                func=check_onnx_parity,
                inputs=["model_checkpoint", "onnx_model", "prediction_images", "operating_point", "params:predict",
                        "params:runtime"],
                outputs="onnx_parity",
                name="check_onnx_parity",
            ),
            Node(
                func=predict_images,
                inputs=["model_checkpoint", "onnx_model", "onnx_parity", "anomaly_detector", "operating_point",
                        "prediction_images", "params:predict", "params:runtime.dask"],
                outputs=["predictions", "prediction_summary"],
                name="predict_images",
            ),
            Node(
                func=draw_overlays,
                inputs=["predictions", "params:predict"],
                outputs="prediction_overlays",
                name="draw_defect_map_overlays",
            ),
            Node(
                func=format_for_spreadsheet,
                inputs="predictions",
                outputs="predictions_csv",
                name="format_predictions_for_spreadsheet",
            ),
        ],
        tags="predict",
    )
