"""Project settings: Kedro defaults, with the configuration loader set up for this project."""

import os
import sys

from kedro.config import OmegaConfigLoader

# Kedro's log handler lays lines out for an 80-column terminal when it cannot ask one (output to a file, a
# pipe or CI), so a log there was a column of fragments; without a terminal, lines are laid out 240 wide.
# Progress bars there are no bars but carriage returns spliced into the log lines: off without a terminal.
# A COLUMNS or TQDM_DISABLE of your own wins.
if not sys.stdout.isatty():
    os.environ.setdefault("COLUMNS", "240")
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_DISABLE", "1")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # an environment such as conf/cifar10_dev overrides single keys, not whole blocks
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
    # conf/<env>/mlflow.yml, the patterns kedro-mlflow would add itself, declared here so that the
    # project's tracking hook can read the file before kedro-mlflow does
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
}

# Experiment tracking (conf/base/mlflow.yml): kedro-mlflow's hook, through the project's subclass
# that adds metrics, artefacts and the model from the catalog's metadata; the plugin's own copy of
# the hook is disabled so that it does not run twice. A failed save leaves no partial version
# behind, and runs that share unversioned state (the feature cache, the training state) never
# overlap; each node's wall time is logged (and tracked in MLflow), and the run ends with the slowest
# nodes first, and then with its summary (what is served, how well, where the figures are). Before all
# that, unknown parameter keys and source settings their kind ignores stop the run.
from image_classification.hooks import NodeTimes, ParameterCheck, PartialSaveCleanup, SharedStateLock  # noqa: E402
from image_classification.run_summary import RunSummary  # noqa: E402
from image_classification.tracking import ProjectMlflowHook  # noqa: E402

NODE_TIMES = NodeTimes()
# pluggy calls the last registered first: the node timings, ..., the tracking hook (which closes the
# MLflow run), and the run's summary last of all; ParameterCheck goes first of all (tryfirst)
HOOKS = (RunSummary(), ParameterCheck(), ProjectMlflowHook(NODE_TIMES), PartialSaveCleanup(), SharedStateLock(),
         NODE_TIMES)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # its distribution's name, either spelling
