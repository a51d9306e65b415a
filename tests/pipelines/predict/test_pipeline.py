"""The predict pipeline on its own, from a saved checkpoint, operating point and detector (in memory)."""

from __future__ import annotations

from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from ...conftest import KeptDataset

from image_classification.pipelines.predict import create_pipeline
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.pipelines.predict.nodes import PREDICTION_COLUMNS, PredictConfig

from .helpers import MIXED_ERRORS, MIXED_FILES, knn_detector_payload, tiny_checkpoint



def test_predict_scores_a_folder_with_bad_files_one_row_each(mixed_folder):
    inputs = {
        "model_checkpoint": tiny_checkpoint(),
        "operating_point": {"threshold": 0.37, "backbone": "efficientnet_lite0", "best_epoch": 3},
        "anomaly_detector": knn_detector_payload(threshold=0.3),
        "demo_images": "unused",
        "params:predict": PredictConfig(source={"kind": "folder_tree", "root": str(mixed_folder)}, workers=1, batch_size=4,
                                        parity_images=4),
        "params:predict.source": {"kind": "folder_tree", "root": str(mixed_folder)},
        "params:runtime": RuntimeConfig(),  # typed: Kedro builds it before a session runs; a bare runner does not
        "params:runtime.dask": None,  # in this process
    }
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    for name in ("predictions", "prediction_summary", "onnx_parity", "onnx_model", "predictions_csv"):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)

    table = catalog.load("predictions")
    assert list(table.columns) == PREDICTION_COLUMNS
    assert len(table) == MIXED_FILES and table["path"].is_unique
    relative = table["path"].str.slice(len(str(mixed_folder)) + 1)
    failed = table["error"] != ""
    assert set(relative[failed]) == MIXED_ERRORS  # grey, RGBA and CMYK images are scored
    assert table.loc[failed, ["score", "anomaly_score", "predicted_label", "anomaly_flag"]].isna().all().all()
    assert not table.loc[failed, "accepted_as_valid"].any()
    scored = table[~failed]
    assert scored["score"].between(0, 1).all()
    assert (scored["predicted_label"] == scored["score"].ge(0.37).map({True: "valid", False: "invalid"})).all()
    assert (scored["anomaly_flag"] == (scored["anomaly_score"] > 0.3)).all()
    assert (scored["accepted_as_valid"] == ((scored["score"] >= 0.37) & ~scored["anomaly_flag"])).all()

    parity = catalog.load("onnx_parity")
    print(f"ONNX parity on {parity['images']} real images: {parity['max_abs_difference']}")
    assert parity["passed"] and parity["images"] == 4 and parity["max_abs_difference"]["score"] < 1e-5
    summary = catalog.load("prediction_summary")
    assert summary["backend"] == "onnxruntime" and summary["threshold"] == 0.37
    assert (summary["images"], summary["errors"]) == (MIXED_FILES, len(MIXED_ERRORS))
    spreadsheet = catalog.load("predictions_csv")
    assert len(spreadsheet) == MIXED_FILES and (spreadsheet.loc[failed.to_numpy(), "score"] == "").all()
