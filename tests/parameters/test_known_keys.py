"""The whole parameter tree is checked before any node runs: a key no step reads is refused with the
closest known one, a source setting its kind ignores with the kind to set, and every configuration the
project ships passes."""

from __future__ import annotations

import dataclasses

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project, find_pipelines
from kedro.validation.type_extractor import TypeExtractor
from omegaconf import OmegaConf

from image_classification.errors import ParameterError, SourceError
from image_classification.hooks import base_parameters
from image_classification.parameters.known_keys import TYPED_BLOCKS, check_parameters, known_keys, unknown_keys
from image_classification.settings import CONFIG_LOADER_ARGS

from ..conftest import REPO_ROOT, cli_params


def loader(env: str | None = None) -> OmegaConfigLoader:
    return OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)


@pytest.fixture(scope="module")
def base() -> dict:
    return base_parameters(loader())


def with_params(base: dict, dotlist: str) -> dict:
    """``base`` with ``--params`` merged in, as ``kedro run`` does."""
    return OmegaConf.to_container(OmegaConf.merge(base, cli_params(dotlist)))


@pytest.mark.parametrize("env", ["base", "cifar10_dev", "defects_dev"])
def test_every_shipped_configuration_passes(env):
    shipped = loader(env)
    check_parameters(shipped["parameters"], base_parameters(shipped))


@pytest.mark.parametrize(("dotlist", "fix"), [
    # a misspelt or misplaced key: the closest known one
    ("data_prep.sorce.kind=folder_tree,data_prep.sorce.root=/x",
     "unknown parameter 'data_prep.sorce' (did you mean 'data_prep.source'?)"),
    ("runtime.dask.adress=local", "'runtime.dask.adress' (did you mean 'runtime.dask.address'?)"),
    ("data_prep.root=/x", "'data_prep.root' (did you mean 'data_prep.source.root'?)"),
    ("data_prep.source.class_map.vaild=a", "(did you mean 'data_prep.source.class_map.valid'?)"),
    # a location the demo kind (the default) would ignore: the kind that reads it
    ("data_prep.source.root=/x", "set data_prep.source.kind=folder_tree (or class_folders) to read data_prep.source.root"),
    ("data_prep.source.csv=/x.csv", "kind is 'demo', which reads no setting, so the run would ignore it; "
                                    "set data_prep.source.kind=csv to read data_prep.source.csv"),
    ("data_prep.source.class_map.valid=a", "set data_prep.source.kind=class_folders"),
    ("predict.source.root=/x", "set predict.source.kind=folder_tree to read predict.source.root"),
])
def test_a_parameter_no_step_would_read_is_refused_with_the_fix(base, dotlist, fix):
    with pytest.raises(ParameterError) as raised:
        check_parameters(with_params(base, dotlist), base)
    assert fix in str(raised.value)


def test_a_key_with_dots_in_its_name_is_refused(base):
    # {"evaluate.bootstrap_samples": 50} in a notebook's runtime_params stays one key that no step reads
    with pytest.raises(ParameterError, match=r"'evaluate.bootstrap_samples' \(one key with dots in its name; nest it"):
        check_parameters({**base, "evaluate.bootstrap_samples": 50}, base)


def test_every_unknown_key_is_counted_in_one_bounded_message(base):
    params = with_params(base, ",".join(f"train.option_{i}=1" for i in range(25)))
    with pytest.raises(ParameterError, match="unknown parameters 'train.option_0'") as raised:
        check_parameters(params, base)
    assert "and 15 more" in str(raised.value) and len(str(raised.value)) < 1000


def test_optional_keys_missing_from_the_yaml_are_known(base):
    # typed fields and source settings absent from conf/base still count (predict.parity_tolerance is one)
    assert {"predict.parity_tolerance", "data_prep.source.labels", "data_prep.image_checks.max_file_bytes"} <= known_keys(base)


def test_the_users_own_words_are_not_checked_key_by_key(base):
    params = with_params(base, "data_prep.source.kind=csv,data_prep.source.csv=/x.csv,"
                               "data_prep.source.labels.good=valid,data_prep.source.labels.Schlecht=invalid")
    assert unknown_keys(params, known_keys(base)) == []
    check_parameters(params, base)
    # even where conf/base gives some words of its own
    with_words = with_params(base, "data_prep.source.labels.ok=valid")
    assert unknown_keys(params, known_keys(with_words)) == []


def test_a_label_word_must_map_to_valid_or_invalid(base):
    params = with_params(base, "data_prep.source.kind=csv,data_prep.source.csv=/x.csv,data_prep.source.labels.good=ok")
    with pytest.raises(SourceError, match="data_prep.source.labels.good is 'ok'; each word must map to valid or invalid"):
        check_parameters(params, base)


def test_a_setting_left_over_when_switching_kinds_is_a_warning(base, caplog):
    # an environment's root, when --params switches to a CSV: common, and the CSV is read as asked
    params = with_params(base, "data_prep.source.kind=folder_tree,data_prep.source.root=/x,"
                               "data_prep.source.kind=csv,data_prep.source.csv=/x.csv")
    check_parameters(params, base)
    assert "data_prep.source.root: set, but data_prep.source.kind is 'csv', which does not read it" in caplog.text


def test_the_old_folder_kind_reads_its_root(base):
    check_parameters(with_params(base, "predict.source.kind=folder,predict.source.root=/x"), base)


def test_every_typed_block_of_the_pipelines_is_known():
    """A dataclass added to a node's ``params:`` input must be in TYPED_BLOCKS, or its optional fields
    absent from conf/base would be refused."""
    configure_project("image_classification")
    typed = TypeExtractor(find_pipelines()).extract_types_from_pipelines()
    dataclass_blocks = {name.removeprefix("params:"): kind for name, kind in typed.items()
                        if dataclasses.is_dataclass(kind)}
    assert "data_prep.split" in dataclass_blocks and "predict" in dataclass_blocks
    assert dataclass_blocks.items() <= TYPED_BLOCKS.items(), dataclass_blocks
