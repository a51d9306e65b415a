"""kedro viz: every pipeline drawn by layer, previews of the outputs of a demo run, and a static build.

The browser tests drive Debian's Chromium (/usr/bin/chromium) through Playwright; no browser is ever
downloaded. They skip where it is not installed (CI installs it with apt-get, see .ci/run).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import re
import signal
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import image_classification.pipelines

from .conftest import base_catalog_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
    "--enable-unsafe-swiftshader",  # software WebGL, which the 3D plotly previews need without a GPU
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None,
    reason="needs Debian's Chromium (apt-get install chromium) and the playwright package",
)
# Pretty node names ("Train Classifier"), and no tour of new features over the graph.
VIZ_SETTINGS = "localStorage.setItem('KedroViz', JSON.stringify({isPrettyName: true, showFeatureHints: false}))"
UI_TIMEOUT_MS = 90_000

LAYERS = ["raw", "primary", "feature", "models", "model_output", "reporting"]
TABLES = ("pandas.ParquetDataset", "pandas.CSVDataset")
# A node (function) of each pipeline the demo run ran, as kedro viz labels it.
PIPELINE_NODES = {
    "data_prep": "Split Images",
    "train": "Train Classifier",
    "score": "Score Index",
    "evaluate": "Choose Operating Point",
    "embedding_analysis": "Cluster Embeddings",
    "zero_shot": "Score Anomalies",
}
# Outputs whose preview kedro viz shows, by kind: metrics, tables, plotly figures and PNGs.
PREVIEWS = {
    "split_summary": "JSONPreview",
    "evaluation_metrics": "JSONPreview",
    "zero_shot_metrics": "JSONPreview",
    "image_index": "TablePreview",
    "zero_shot_decisions": "TablePreview",
    "precision_recall_plot": "PlotlyPreview",
    "pca_scatter_3d": "PlotlyPreview",
    "zero_shot_embedding_3d": "PlotlyPreview",
    "roc_figure": "ImagePreview",
    "training_curves": "ImagePreview",
}
# (pipeline, dataset, what its preview is drawn as in the metadata panel)
PREVIEWS_IN_BROWSER = [
    ("data_prep", "split_summary", ".pipeline-metadata__preview-json"),
    ("zero_shot", "zero_shot_decisions", ".preview-table"),
    ("evaluate", "precision_recall_plot", ".pipeline-plotly-chart"),
    ("evaluate", "roc_figure", ".pipeline-metadata__plot-image"),
]


def viz_layer(entry: dict) -> str | None:
    return ((entry.get("metadata") or {}).get("kedro-viz") or {}).get("layer")


def test_every_catalog_entry_has_a_viz_layer_and_every_table_a_preview_size():
    for name, entry in base_catalog_config().items():
        viz = (entry.get("metadata") or {}).get("kedro-viz") or {}
        assert viz.get("layer") in LAYERS, f"{name}: metadata.kedro-viz.layer must be one of {LAYERS}"
        if entry["type"] in TABLES:
            assert (viz.get("preview_args") or {}).get("nrows", 0) > 0, f"{name}: no preview_args.nrows"


def test_layers_follow_the_data_flow():
    """kedro viz draws no layers at all once a dataset feeds, directly or not, one of an earlier layer."""
    layers = {name: viz_layer(entry) for name, entry in base_catalog_config().items()}
    children: dict[str, set[str]] = {}
    for module in pkgutil.iter_modules(image_classification.pipelines.__path__):
        pipeline = importlib.import_module(f"image_classification.pipelines.{module.name}").create_pipeline()
        for node in pipeline.nodes:
            for name in node.inputs:
                children.setdefault(name, set()).update(node.outputs)

    def downstream(name: str, seen: set[str]) -> set[str]:
        for child in children.get(name, ()):
            if child not in seen:
                seen.add(child)
                downstream(child, seen)
        return seen

    backwards = [f"{name} ({layer}) -> {later} ({layers[later]})"
                 for name, layer in layers.items() if layer
                 for later in downstream(name, set())
                 if layers.get(later) and LAYERS.index(layers[later]) < LAYERS.index(layer)]
    assert not backwards


# ---------------------------------------------------------------- a running kedro viz


def free_port() -> int:
    """A free port below 49152: kedro viz refuses anything above (the OS's own picks often are)."""
    for port in random.Random().sample(range(20000, 49000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 49000")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started with its own session, and every process it started (viz serves from a child)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def viz_url(demo_run: Path, tmp_path_factory) -> Iterator[str]:
    """``kedro viz run`` serving the demo run's project on a free port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("viz") / "kedro_viz.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kedro", "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
            cwd=demo_run, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            # viz moves to the next port when the one asked for was taken in the meantime
            said = re.search(r"http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
            url = f"http://127.0.0.1:{said.group(1) if said else port}/"
            try:
                get_json(url + "api/main")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"kedro viz run did not answer at {url}:\n{log_path.read_text()[-5000:]}")
                time.sleep(1)
        yield url
    finally:
        stop(process)


@pytest.mark.slow
def test_viz_serves_every_pipeline_with_layers_and_previews(viz_url):
    main = get_json(viz_url + "api/main")
    assert {pipeline["id"] for pipeline in main["pipelines"]} >= set(PIPELINE_NODES)
    assert main["layers"] == LAYERS
    data_nodes = {node["name"]: node for node in main["nodes"] if node["type"] == "data"}
    for name, entry in base_catalog_config().items():
        if name in data_nodes:
            assert data_nodes[name]["layer"] == viz_layer(entry), name
    for name, kind in PREVIEWS.items():
        metadata = get_json(f"{viz_url}api/nodes/{data_nodes[name]['id']}")
        assert metadata["preview_type"] == kind and metadata["preview"], name
    table = get_json(f"{viz_url}api/nodes/{data_nodes['zero_shot_decisions']['id']}")["preview"]
    assert len(table["data"]) == base_catalog_config()["zero_shot_decisions"]["metadata"]["kedro-viz"]["preview_args"]["nrows"]


@contextmanager
def chromium_page(profile: Path):
    """A page of headless Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            context.add_init_script(VIZ_SETTINGS)
            yield context.new_page()
        finally:
            context.close()


def task_node(page, label: str):
    """A node of the graph that runs a function (a dataset may bear the same name: split_images)."""
    return page.locator(".pipeline-node--task", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))


def snap(page, path: Path) -> None:
    """A screenshot once nodes have faded in."""
    page.wait_for_timeout(1500)
    page.screenshot(path=path)


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_viz_draws_every_pipeline_by_layer_in_chromium(viz_url, tmp_path):
    from playwright.sync_api import expect

    with chromium_page(tmp_path / "profile") as page:
        page.goto(viz_url)
        expect(page.locator(".pipeline-layer-name")).to_have_text(LAYERS, timeout=UI_TIMEOUT_MS)
        expect(task_node(page, "Train Classifier")).to_be_visible(timeout=UI_TIMEOUT_MS)
        snap(page, tmp_path / "viz_default.png")
        for pipeline, label in PIPELINE_NODES.items():
            page.goto(f"{viz_url}?pid={pipeline}")
            expect(task_node(page, label)).to_be_visible(timeout=UI_TIMEOUT_MS)
            snap(page, tmp_path / f"viz_{pipeline}.png")
        for pipeline, dataset, drawn_as in PREVIEWS_IN_BROWSER:
            page.goto(f"{viz_url}?pid={pipeline}&sn={dataset}")
            expect(page.locator(f".pipeline-metadata {drawn_as}").first).to_be_visible(timeout=UI_TIMEOUT_MS)
            snap(page, tmp_path / f"viz_preview_{dataset}.png")
        page.goto(f"{viz_url}?pid=zero_shot&sn=zero_shot_embedding_3d")
        page.get_by_text("Expand preview").click(timeout=UI_TIMEOUT_MS)
        expect(page.locator(".js-plotly-plot canvas").first).to_be_visible(timeout=UI_TIMEOUT_MS)
        snap(page, tmp_path / "viz_zero_shot_embedding_3d.png")


# ---------------------------------------------------------------- kedro viz build


@pytest.fixture(scope="module")
def viz_build(demo_run: Path) -> Path:
    """The static site ``kedro viz build`` makes of the demo run, previews included."""
    command = [sys.executable, "-m", "kedro", "viz", "build", "--include-previews"]
    result = subprocess.run(command, cwd=demo_run, capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    return demo_run / "build"


@pytest.mark.slow
def test_viz_build_writes_a_static_site(viz_build):
    assert (viz_build / "index.html").is_file()
    main = json.loads((viz_build / "api" / "main").read_text())
    assert main["layers"] == LAYERS
    for pipeline in PIPELINE_NODES:
        assert json.loads((viz_build / "api" / "pipelines" / pipeline).read_text())["selected_pipeline"] == pipeline
    node_ids = {node["name"]: node["id"] for node in main["nodes"]}
    for name, kind in PREVIEWS.items():
        metadata = json.loads((viz_build / "api" / "nodes" / node_ids[name]).read_text())
        assert metadata["preview_type"] == kind and metadata["preview"], name


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_static_site_renders_in_chromium(viz_build, tmp_path):
    from playwright.sync_api import expect

    with ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(viz_build))) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with chromium_page(tmp_path / "profile") as page:
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/?pid=train")
                expect(task_node(page, "Train Classifier")).to_be_visible(timeout=UI_TIMEOUT_MS)
                snap(page, tmp_path / "static_site_train.png")
        finally:
            server.shutdown()
