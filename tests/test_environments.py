"""Each configuration environment keeps its own outputs: a run with ``--env cifar10_dev`` never loads
the model, operating point or detector that the demo or another environment made, and each
environment's predict scores that environment's own images."""

from __future__ import annotations

import itertools
import posixpath

import pytest
from kedro.config import OmegaConfigLoader

from image_classification.settings import CONFIG_LOADER_ARGS

from .conftest import REPO_ROOT

ENVIRONMENTS = sorted(["local", *(path.name for path in (REPO_ROOT / "conf").iterdir()
                                  if path.is_dir() and path.name not in ("base", "local"))])
SHARED_INPUTS = {"demo_images"}  # the demo's generated images: an input every environment may read


def configuration(env: str, key: str) -> dict:
    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    return loader[key]


def output_paths(env: str) -> dict[str, str]:
    return {name: entry["filepath"] for name, entry in configuration(env, "catalog").items()
            if "filepath" in entry and name not in SHARED_INPUTS}


def test_every_shipped_environment_has_a_data_root_of_its_own():
    assert {"local", "cifar10_dev", "defects_dev"} <= set(ENVIRONMENTS)
    roots = {env: configuration(env, "globals")["data_root"] for env in ENVIRONMENTS}
    assert roots["local"] == "data"
    assert all(roots[env] == f"data/envs/{env}" for env in ENVIRONMENTS if env != "local"), roots


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(ENVIRONMENTS, 2)))
def test_no_two_environments_share_an_output(first, second):
    ours, theirs = output_paths(first), output_paths(second)
    assert set(ours) == set(theirs)
    shared = {name: ours[name] for name in ours if ours[name] == theirs[name]}
    assert not shared, f"{first} and {second} both read and write {shared}"


@pytest.mark.parametrize("env", [env for env in ENVIRONMENTS if env != "local"])
def test_each_data_set_environment_predicts_its_own_images_not_the_demo(env):
    source = configuration(env, "parameters")["predict"]["source"]
    data_prep = configuration(env, "parameters")["data_prep"]["source"]
    assert source["kind"] != "demo", f"conf/{env}: predict would score the demo's images"
    data_set = data_prep.get("root") or posixpath.dirname(data_prep["csv"])  # the folder data_prep reads
    assert (source.get("csv") or source.get("root")).startswith(data_set + "/"), (source, data_set)
