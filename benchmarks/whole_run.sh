#!/usr/bin/env bash
# Wall time of whole runs at two git revisions, side by side, one after the other:
#   1. `kedro run --env cifar10_dev` (needs ../shared/datasets/cifar10-dev), and
#   2. the stages after train with one fine-tuned backbone block on the demo
#      (train.trainable_blocks=1, one epoch), where every later stage must read the images through
#      the whole model: before the score stage that was three passes, now one.
# Each arm runs in a fresh scratch project (the revision's conf/, the demo copied in, so revisions
# that cannot build it on demand run too) with that revision's source first on PYTHONPATH.
#
#   benchmarks/whole_run.sh OLD_REV NEW_REV [OLD_PYTHON] [NEW_PYTHON]
#
# OLD_PYTHON / NEW_PYTHON: the interpreter of a virtualenv with that revision's dependencies
# (default: this checkout's .venv). A revision from before kedro-mlflow was added should run in a
# virtualenv without it, or kedro-mlflow's plugin hooks load into its runs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
old=$1 new=$2
python_old=${3:-$repo/.venv/bin/python} python_new=${4:-$repo/.venv/bin/python}
work=$(mktemp -d)
demo=$repo/data/01_raw/demo
[ -d "$demo" ] || (cd "$repo" && "$python_new" -m kedro run --pipelines data_prep >/dev/null)
ln -sfn "$repo/../shared" "$work/shared"

project() {  # project NAME REV -> prints the scratch project's path
  local tree=$work/tree_$1 proj=$work/$1
  git -C "$repo" worktree add -q --detach "$tree" "$2"
  mkdir -p "$proj/data/01_raw" "$proj/src"
  cp -r "$tree/conf" "$tree/pyproject.toml" "$tree/.telemetry" "$proj/"
  rm -rf "$proj/conf/local/"*
  cp -r "$demo" "$proj/data/01_raw/demo"
  echo "$proj"
}

timed() {  # timed LABEL PYTHON TREE PROJECT ARGS... -> one line of results
  local label=$1 python=$2 tree=$3 proj=$4; shift 4
  local start end
  start=$(date +%s.%N)
  (cd "$proj" && PYTHONPATH="$tree/src" "$python" -m kedro run "$@" >"$work/$label.log" 2>&1)
  end=$(date +%s.%N)
  printf '%-34s %8.1f s   whole-model passes: %s\n' "$label" "$(echo "$end - $start" | bc)" \
    "$(grep -c 'INFO     Scoring .* images through the' "$work/$label.log" || true)"
}

for arm in old new; do
  rev=${!arm}; python=python_$arm; python=${!python}
  proj=$(project "$arm" "$rev"); tree=$work/tree_$arm
  ln -sfn "$repo/../shared" "$proj/../shared"
  timed "$arm cifar10_dev ($rev)" "$python" "$tree" "$proj" --env cifar10_dev
  ft=$(project "${arm}_ft" "$rev"); tree=$work/tree_${arm}_ft
  (cd "$ft" && PYTHONPATH="$tree/src" "$python" -m kedro run --pipelines data_prep,train \
     --params "train.trainable_blocks=1,train.epochs=1" >/dev/null 2>&1)
  stages=evaluate,embedding_analysis,zero_shot
  [ -d "$tree/src/image_classification/pipelines/score" ] && stages=score,$stages
  timed "$arm fine-tuned, after train" "$python" "$tree" "$ft" --pipelines "$stages" \
    --params "train.trainable_blocks=1,train.epochs=1"
done
for tree in "$work"/tree_*; do git -C "$repo" worktree remove --force "$tree"; done
echo "logs in $work"
