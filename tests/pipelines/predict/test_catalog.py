"""predict's catalog entries as configured: the ONNX model goes through the catalog as raw bytes."""

from __future__ import annotations

from kedro.io import DataCatalog

from ...conftest import base_catalog_config


def entries(tmp_path, *names: str) -> DataCatalog:
    config = base_catalog_config("catalog_predict.yml")
    for name in names:
        config[name]["filepath"] = str(tmp_path / config[name]["filepath"])
    return DataCatalog.from_config({name: config[name] for name in names})


def test_onnx_model_round_trips_as_bytes_in_versions(tmp_path):
    catalog = entries(tmp_path, "onnx_model")
    assert not catalog.exists("onnx_model")
    payload = b"\x08\x07\x12\x07pytorch\x00\xff binary protobuf"
    catalog.save("onnx_model", payload)
    assert catalog.load("onnx_model") == payload
    saved = list((tmp_path / "data/06_models/model.onnx").iterdir())
    assert len(saved) == 1 and (saved[0] / "model.onnx").read_bytes() == payload


def test_every_predict_output_is_versioned():
    config = base_catalog_config("catalog_predict.yml")
    assert all(entry.get("versioned") for entry in config.values())
    assert {"onnx_model", "onnx_parity", "predictions", "predictions_csv", "prediction_summary"} <= set(config)


def test_overlays_are_one_folder_of_pngs_per_run_written_one_image_at_a_time(tmp_path):
    from PIL import Image

    catalog = entries(tmp_path, "prediction_overlays")
    drawn = []

    def draw(shade: int):
        def image():
            drawn.append(shade)
            return Image.new("RGB", (8, 6), (shade, 0, 0))
        return image

    catalog.save("prediction_overlays", {"cell-1a2b": draw(10), "cell-3c4d": draw(200)})
    assert drawn == [10, 200]
    loaded = catalog.load("prediction_overlays")
    assert sorted(loaded) == ["cell-1a2b", "cell-3c4d"] and loaded["cell-3c4d"]().getpixel((0, 0)) == (200, 0, 0)
    versions = list((tmp_path / "data/08_reporting/prediction_overlays").iterdir())
    assert len(versions) == 1 and len(list((versions[0] / "prediction_overlays").glob("*.png"))) == 2

