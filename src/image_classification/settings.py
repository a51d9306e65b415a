"""Project settings: Kedro defaults, with the configuration loader set up for this project."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # an environment such as conf/cifar10_dev overrides single keys, not whole blocks
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
}
