"""Every `kedro run` command in the README names pipelines, environments, parameters and datasets
that exist, so a stranger who copies one gets a run, not a typo's error."""

from __future__ import annotations

import functools
import re
import shlex

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project, find_pipelines
from omegaconf import OmegaConf

from .conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    inline = re.findall(r"`(kedro run[^`]*)`", README)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [part.strip() for line in lines for part in line.split("&&")] + inline
    # commands with <placeholders> are templates in prose; the concrete examples are checked
    return sorted({c for c in commands if c.startswith("kedro run") and "<" not in c})


def options(command: str) -> dict[str, str]:
    words = shlex.split(command)[2:]
    found = {}
    for index, word in enumerate(words):
        if word.startswith("--"):
            found[word] = words[index + 1] if index + 1 < len(words) and not words[index + 1].startswith("--") else ""
    return found


@functools.cache
def parameters(env: str | None) -> dict:
    loader = OmegaConfigLoader(
        conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env=env or "base",
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


@functools.cache
def catalog_names() -> set[str]:
    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env="base")
    return set(loader["catalog"])


COMMANDS = readme_commands()


def test_the_readme_has_run_commands():
    assert "kedro run" in COMMANDS
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_names_things_that_exist(command):
    configure_project("image_classification")
    known_pipelines = set(find_pipelines()) | {"__default__"}
    given = options(command)
    unknown_options = set(given) - {"--pipelines", "--params", "--env", "--load-versions"}
    assert not unknown_options, f"{command}: unexpected options {unknown_options}"
    for name in filter(None, given.get("--pipelines", "").split(",")):
        assert name in known_pipelines, f"{command}: no pipeline '{name}'"
    env = given.get("--env")
    if env:
        assert (REPO_ROOT / "conf" / env).is_dir(), f"{command}: no configuration environment '{env}'"
    params = OmegaConf.create(parameters(env))
    for pair in filter(None, given.get("--params", "").split(",")):
        key = pair.split("=", 1)[0]
        assert OmegaConf.select(params, key, default="<missing>") != "<missing>", f"{command}: no parameter '{key}'"
    for pair in filter(None, given.get("--load-versions", "").split(",")):
        assert pair.split(":", 1)[0] in catalog_names(), f"{command}: no dataset '{pair}'"
