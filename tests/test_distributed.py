"""The maps over images on a real Dask cluster of two worker processes: same results as in-process,
images on a real S3-compatible server, a worker killed mid-run, an unreachable scheduler."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch
from distributed import Client, LocalCluster, get_task_stream
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from image_classification.dask_shutdown import HEARTBEAT_FAILED, HeartbeatAtShutdown
from image_classification.distributed import DaskSettings, dask_client
from image_classification.errors import ParameterError
from image_classification.patches import PatchClassifier
from image_classification.pipelines.data_prep import (
    create_pipeline as data_prep_pipeline,
)
from image_classification.pipelines.data_prep.nodes import check_images
from image_classification.pipelines.predict.nodes import PredictConfig, predict_images

from .conftest import BAD_FILES, KeptDataset, jpeg_bytes, noise_image, write_files
from .pipelines.predict.helpers import baseline_payload, knn_detector_payload, tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning")

CHECKS = {"min_side": 16, "max_pixels": 10_000_000, "workers": 1}
OPERATING_POINT = {"threshold": 0.37, "backbone": "efficientnet_lite0", "best_epoch": 3}
BAD = ("zero_bytes.jpg", "truncated.jpg", "page.jpg")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each, as ``runtime.dask.address: tcp://...`` finds them."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local) as client:
        yield local.scheduler_address, client


def image_files(count: int, seed: int = 0) -> dict[str, bytes]:
    files = {f"img_{index:03d}.jpg": jpeg_bytes(noise_image(seed + index, (48, 40))) for index in range(count)}
    return files | {name: BAD_FILES[name]() for name in BAD}


def candidates(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "label": "valid", "kind": "valid", "split": None, "group": None},
                        dtype="string")


NO_SKIPPED = pd.DataFrame(columns=["path", "label", "kind", "reason"], dtype="string")


def predict_inputs(paths: list[str]) -> dict:
    return {"model_checkpoint": tiny_checkpoint(), "onnx_model": None, "onnx_parity": {"passed": False},
            "anomaly_detector": knn_detector_payload(threshold=0.3), "operating_point": OPERATING_POINT,
            "prediction_images": pd.DataFrame({"path": paths, "error": ""}, dtype="string"),
            "predict": PredictConfig(backend="torch", workers=0, batch_size=4)}


def test_checking_images_on_two_workers_gives_the_in_process_rows(tmp_path, cluster):
    address, client = cluster
    paths = sorted(str(path) for path in write_files(tmp_path, image_files(30)))
    here = check_images(candidates(paths), NO_SKIPPED, CHECKS)
    with get_task_stream(client) as tasks:
        there = check_images(candidates(paths), NO_SKIPPED, CHECKS, DaskSettings(address=address, partition_size=4))
    for mine, theirs in zip(here, there):
        pd.testing.assert_frame_equal(mine, theirs)
    assert len(here[0]) == 30 and len(here[1]) == len(BAD)
    ran = [task for task in tasks.data if task["key"].startswith("Checking images-")]
    assert len(ran) == 9 and len({task["worker"] for task in ran}) == 2


@pytest.mark.parametrize("served", ["model", "baseline", "patch_classifier"])
def test_predicting_on_two_workers_gives_the_in_process_scores(tmp_path, cluster, served):
    address, _ = cluster
    paths = sorted(str(path) for path in write_files(tmp_path, image_files(14)))
    inputs = predict_inputs(paths)
    if served == "baseline":  # the workers score the pooled features with the saved baseline weights
        inputs["operating_point"] = OPERATING_POINT | {"candidate": "baseline", "served_weights": baseline_payload()}
    if served == "patch_classifier":  # and the patch vectors, whose defect maps come back with the scores
        classifier = PatchClassifier.fit(torch.randn(8, 4, 152, generator=torch.Generator().manual_seed(0)),
                                         np.arange(8) % 2, epochs=2, hidden=8, top_k=2)
        inputs["operating_point"] = OPERATING_POINT | {"candidate": "patch_classifier",
                                                       "served_weights": classifier.to_payload(grid=2)}
    here, _ = predict_images(**inputs)
    there, summary = predict_images(**inputs, dask=DaskSettings(address=address, partition_size=3))
    floats = ["score", "anomaly_score", "model_score", "defect_map"]
    pd.testing.assert_frame_equal(here.drop(columns=floats), there.drop(columns=floats))
    drawn = here["defect_map"].notna()
    assert drawn.any() == (served == "patch_classifier") and (there["defect_map"].notna() == drawn).all()
    if drawn.any():
        np.testing.assert_allclose(np.stack(there.loc[drawn, "defect_map"].to_list()),
                                   np.stack(here.loc[drawn, "defect_map"].to_list()), atol=1e-4)
    np.testing.assert_allclose(there["score"], here["score"], atol=1e-5)
    np.testing.assert_allclose(there["model_score"], here["model_score"], atol=1e-5)
    readable = here["error"] == ""
    assert (here.loc[readable, "score"] == here.loc[readable, "model_score"]).all() == (served == "model")
    np.testing.assert_allclose(there["anomaly_score"], here["anomaly_score"], atol=1e-4)
    assert (there["error"] != "").sum() == len(BAD)
    assert summary["dask"]["workers"] == 2 and summary["backend"] == "torch" and summary["threads"] == 1


def _busy_worker(client: Client, prefix: str, deadline: float) -> str:
    """The address of a worker running a task whose key starts with ``prefix`` (waits for one)."""
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(str(key).startswith(prefix) for key in keys):
                return worker
        time.sleep(0.02)
    raise AssertionError(f"no {prefix} task started")


def test_a_worker_killed_mid_run_loses_no_image(tmp_path, cluster):
    address, client = cluster
    paths = sorted(str(path) for path in write_files(tmp_path, image_files(90)))
    expected, _ = predict_images(**predict_inputs(paths))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["table"] = predict_images(**predict_inputs(paths), dask=DaskSettings(address=address,
                                                                                          partition_size=3))[0]
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = error

    pids = client.run(os.getpid)
    runner = threading.Thread(target=run)
    runner.start()
    victim = _busy_worker(client, "Predicting-", time.monotonic() + 120)
    time.sleep(0.5)  # the backend is built and partitions are being scored
    os.kill(pids[victim], signal.SIGKILL)
    runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    table = outcome["table"]
    assert table["path"].tolist() == expected["path"].tolist()  # exactly one row per listed image
    assert (table["error"] == expected["error"]).all()
    np.testing.assert_allclose(table["score"], expected["score"], atol=1e-5)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert set(client.run(os.getpid).values()) != set(pids.values())


def test_an_unreachable_scheduler_names_the_address_and_the_setting():
    with pytest.raises(ParameterError) as raised:
        with dask_client(DaskSettings(address="tcp://127.0.0.1:9", connect_timeout_s=1)):
            pass
    message = str(raised.value)
    assert "tcp://127.0.0.1:9" in message and "runtime.dask.address" in message and "\n" not in message


def test_a_missing_scheduler_file_is_named():
    with pytest.raises(ParameterError, match="scheduler file /nowhere/scheduler.json does not exist"):
        with dask_client(DaskSettings(address="/nowhere/scheduler.json")):
            pass


@pytest.mark.parametrize("values, named", [({"address": " "}, "runtime.dask.address"),
                                           ({"workers": 0}, "runtime.dask.workers"),
                                           ({"partition_size": 0}, "partition_size"),
                                           ({"connect_timeout_s": 0}, "connect_timeout_s")])
def test_bad_dask_settings_name_the_setting(values, named):
    with pytest.raises(ParameterError, match=named):
        DaskSettings(**values)


def test_the_default_keeps_the_in_process_path():
    settings = DaskSettings.from_params(None)
    assert not settings.enabled
    with dask_client(settings) as client:
        assert client is None


def _heartbeat_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, None, None)


@pytest.mark.parametrize(("status", "kept"), [("running", True), ("closing", False),
                                              ("closing_gracefully", False), ("closed", False)])
def test_a_failed_heartbeat_is_dropped_only_while_the_worker_closes(status, kept):
    worker = SimpleNamespace(status=SimpleNamespace(name=status))
    quiet = HeartbeatAtShutdown(worker)
    assert quiet.filter(_heartbeat_record(HEARTBEAT_FAILED + ".")) is kept
    # every other record is kept, whatever the status
    assert quiet.filter(_heartbeat_record("Unexpected exception during heartbeat. Closing worker."))


def _worker_filters() -> list[str]:
    return [type(each).__name__ for each in logging.getLogger("distributed.worker").filters]


def test_every_worker_of_a_local_cluster_carries_the_heartbeat_at_shutdown_filter():
    settings = DaskSettings(address="local", workers=2, dashboard_address=None)
    with dask_client(settings) as client:
        filters = client.run(_worker_filters)
    assert len(filters) == 2 and all("HeartbeatAtShutdown" in names for names in filters.values()), filters


# ----------------------------------------------------------------------------- images on S3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_bucket():
    """A real S3-compatible server (moto's, in its own process) with a bucket; its endpoint and
    credentials in the environment, where boto (and so fsspec's s3fs) reads them on every worker."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(name, value)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the S3 server did not start"
                time.sleep(0.1)
        # a file system an earlier test made (without these credentials) would be reused from fsspec's cache
        type(fsspec.filesystem("s3", skip_instance_cache=True)).clear_instance_cache()
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("images")
        try:
            yield fs
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_data_prep_and_predict_read_images_on_s3_with_a_local_cluster(s3_bucket):
    files = image_files(16, seed=100)
    s3_bucket.pipe({f"images/line_1/{name}": data for name, data in files.items()})
    names = sorted(files)
    labels = "path,label\n" + "".join(f"line_1/{name},{'valid' if index % 2 else 'invalid'}\n"
                                      for index, name in enumerate(names))
    s3_bucket.pipe("images/labels.csv", labels.encode())
    local = DaskSettings(address="local", workers=2, partition_size=4, dashboard_address=None)

    inputs = {"params:data_prep.source": {"kind": "csv", "csv": "s3://images/labels.csv"},
              "params:data_prep.image_checks": CHECKS, "params:data_prep.near_duplicate_max_distance": 2,
              "params:data_prep.split": {"train": 0.6, "val": 0.2, "test": 0.2}, "params:seed": 42,
              "params:runtime.dask": local, "demo_images": "unused"}
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    for name in ("image_index", "rejected_images", "duplicate_report", "split_summary"):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(data_prep_pipeline(), catalog)
    index, rejected = catalog.load("image_index"), catalog.load("rejected_images")
    assert sorted(index["path"]) == [f"s3://images/line_1/{name}" for name in names if name.startswith("img_")]
    assert sorted(rejected["path"]) == [f"s3://images/line_1/{name}" for name in sorted(BAD)]

    listed = [f"s3://images/line_1/{name}" for name in names]
    here, _ = predict_images(**predict_inputs(listed))
    there, summary = predict_images(**predict_inputs(listed), dask=local)
    assert there["path"].tolist() == listed and (there["error"] == here["error"]).all()
    assert (there["error"] != "").sum() == len(BAD)
    np.testing.assert_allclose(there["score"], here["score"], atol=1e-5)
    assert summary["dask"] == {"address": "local", "partition_size": 4, "workers": 2}


def test_train_extracts_features_on_two_workers_like_in_process(tmp_path, cluster):
    import hashlib

    import torch

    from image_classification.artefacts import FeatureCache
    from image_classification.parameters.shared import ModelConfig
    from image_classification.pipelines.train.nodes import extract_features
    from image_classification.training import TrainConfig

    address, client = cluster
    paths = sorted(str(path) for path in write_files(tmp_path, image_files(10)))
    index = pd.DataFrame({"path": paths, "sha256": [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]})
    model, train = ModelConfig(weights="none"), TrainConfig(patch_grid=2)
    runtime = {"device": "cpu", "batch_size": 4, "workers": 0, "backend": "onnxruntime", "parity_tolerance": 1e-3}
    here = FeatureCache.from_payload(extract_features(index, model, runtime, 0, train))
    with get_task_stream(client) as tasks:
        there = FeatureCache.from_payload(extract_features(
            index, model, runtime | {"dask": {"address": address, "partition_size": 4}}, 0, train))
    assert there.paths == here.paths and there.errors == here.errors and sum(map(bool, here.errors)) == len(BAD)
    assert there.backbone_sha256 == here.backbone_sha256
    for name in ("head_input", "pooled", "patches"):
        mine, theirs = getattr(here, name), getattr(there, name)
        assert theirs.shape == mine.shape and theirs.dtype == torch.float16
        np.testing.assert_allclose(theirs.float(), mine.float(), atol=2e-3 * float(mine.float().abs().max()))
    ran = [task for task in tasks.data if task["key"].startswith("Backbone features-")]
    assert len(ran) == 4 and len({task["worker"] for task in ran}) == 2


def test_a_worker_builds_its_model_once_per_key():
    from image_classification.distributed import worker_cached

    built = []
    for key in ("a", "a", "b", "b", "a"):
        worker_cached(key, lambda key=key: built.append(key) or key)
    assert built == ["a", "b", "a"]
