"""Project settings: Kedro defaults, with the configuration loader set up for this project."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # an environment such as conf/cifar10_dev overrides single keys, not whole blocks
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
}

from image_classification.hooks import PartialSaveCleanup, SharedStateLock

HOOKS = (PartialSaveCleanup(), SharedStateLock())
# kedro-mlflow, when installed, registers itself as a plugin; the project decides its hooks itself
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # its distribution's name, either spelling
