"""The plain install (`pip install -e .`) serves every command the README shows: `kedro run`,
`kedro viz` and `kedro jupyter` need no extra. Checked on the installed distribution's metadata, so
it fails if kedro-viz or Jupyter move back into an optional extra."""

from __future__ import annotations

from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

# what each command needs beyond Kedro itself
COMMAND_NEEDS = {
    # runtime.dask.address (a LocalCluster or a cluster) and s3:// images need no extra either
    "kedro run": ["kedro", "torch", "onnxruntime", "dask", "distributed", "s3fs"],
    "kedro viz": ["kedro-viz"],
    "kedro jupyter lab": ["jupyterlab", "ipykernel"],
}


def plain_requirements() -> dict[str, Requirement]:
    """The distribution's requirements that hold without any extra, by normalised name."""
    found = {}
    for line in requires("image_classification") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found[requirement.name.lower().replace("_", "-")] = requirement
    return found


@pytest.mark.parametrize("command", sorted(COMMAND_NEEDS))
def test_the_plain_install_brings_what_the_command_needs(command):
    missing = [name for name in COMMAND_NEEDS[command] if name not in plain_requirements()]
    assert not missing, f"`{command}` needs {missing}, which `pip install -e .` does not install"


def test_test_tools_stay_in_the_test_extra():
    assert {"pytest", "hypothesis", "playwright", "moto"}.isdisjoint(plain_requirements())
