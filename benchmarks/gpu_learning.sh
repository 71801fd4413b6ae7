#!/usr/bin/env bash
# Long whole-model runs on one GPU, side by side, for a fixed wall-clock budget (a lent machine's $OUT comes back).
#
#   OUT=/tmp/gpu-learning TRAIN_SECONDS=360 bash benchmarks/gpu_learning.sh
#   # proving the script on the CPU first (a few steps of each run, everything written the same way):
#   OUT=/tmp/gpu-learning-dry TRAIN_SECONDS=60 DEVICE=cpu EVAL_SECONDS=600 RUNS_DIR=/tmp/runs-gpu-dry \
#     EXTRA="training.gma_warmup_steps=2 training.log_every=2" bash benchmarks/gpu_learning.sh
#   # other runs, another data folder (tests/benchmarks/test_gpu_learning.py runs it so at minimal size):
#   RUN_LIST="a|--random-seed 0;b|--random-seed 1 loss.code_switch_weight=10" DATA_ROOT=/data/ws GENERATE_ARGS=... \
#     OUT=/tmp/gpu-learning bash benchmarks/gpu_learning.sh
#   # a run's own data.root=... (a set made beforehand) wins over DATA_ROOT; WEIGHTS="a b" brings back those runs'
#   # weights only (each is ~8.5 MiB and a lent machine returns 8 files, 64 MiB); DEVICE_TESTS=0 skips the tests.
#
# Generates the first run's W-Sprites set (the c2 set), starts every run of RUNS below at once (train.py, CONFIG —
# the first run's configs/wsprites-c2.yaml — with the run's overrides, checkpoints and media every 1,000 steps), and
# on the CUDA device the
# device-parametrised tests beside them; after TRAIN_SECONDS sends SIGTERM (train.py finishes its step and saves),
# then evaluates each run's checkpoints (validation split: the last one with both protocols, every 2,000th one-step;
# EVAL_ARGS, by default --refit-reader-norm 50)
# and writes to OUT: driver.log, pytest.log, NAME.pt per run (the last checkpoint's weights in float16, no
# optimiser state: put it as runs/NAME/checkpoints/latest.pth beside the archive's config.yaml and evaluate.py,
# play.py and build_evaluation_dataset.py read it; not for --resume-step) and runs-1.tgz, runs-2.tgz, ... (three runs' each:
# logs, configs, metrics.jsonl, evaluation results and last media PNGs). docs/local-actions.md has what came back.
set -u
OUT=${OUT:?set OUT to the folder that comes back}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
EVAL_SECONDS=${EVAL_SECONDS:-120}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:-}  # overrides for every run (the dry run: training.gma_warmup_steps=2 training.log_every=2)
CONFIG=${CONFIG:-configs/wsprites-c2.yaml}
DATA_ROOT=${DATA_ROOT:-datasets/wsprites-c2}
GENERATE_ARGS=${GENERATE_ARGS:---num-characters 16 --choices-per-layer 2 --videos-per-character 15 --frames 30}
EVAL_ARGS=${EVAL_ARGS:---refit-reader-norm 50}  # evaluate.py options for every evaluation
RUN_LIST=${RUN_LIST:-}  # "name|train.py options" entries separated by ';' instead of the five runs below
RUNS_DIR=${RUNS_DIR:-runs-gpu}
WEIGHTS=${WEIGHTS:-all}  # the runs whose float16 weights come back, or all
DEVICE_TESTS=${DEVICE_TESTS:-1}  # 0: no device-parametrised tests beside the runs (their cores go to the runs)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$RUNS_DIR"
log="$OUT/driver.log"
say() { echo "[$(date +%T)] $*" | tee -a "$log"; }

say "device $DEVICE, training $TRAIN_SECONDS s"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >>"$log" 2>&1

# shellcheck disable=SC2086  # the arguments are words
"$PYTHON" -m data.wsprites.generate --out "$DATA_ROOT" $GENERATE_ARGS --workers 8 >>"$log" 2>&1 \
  || { say "data generation failed"; exit 1; }
say "data ready"

# issue 21's next GPU question (docs/local-actions.md, tenth to fifteenth rounds): does the code effect on unseen
# characters reach 1 dB on switches over thousands of steps at batch 16, with the readers frozen at 1,000
# (statistics refitted: the config's own keys since the fifteenth round) or not? Since the twentieth round the
# config also drops the learning rate tenfold at step 3,000 (training.lr_milestones), in these runs too.
B16="training.batch_size=16"
NOFREEZE="training.action_freeze_step=0 training.action_freeze_refit_batches=0"
RUNS=(
  "c2-b16-s0|--random-seed 0 $B16"
  "c2-b16-s1|--random-seed 1 $B16"
  "c2-b16-nofrz-s0|--random-seed 0 $B16 $NOFREEZE"
  "c2-b16-nofrz-s1|--random-seed 1 $B16 $NOFREEZE"
  "c2-s0|--random-seed 0"
)
[ -n "$RUN_LIST" ] && IFS=';' read -r -a RUNS <<<"$RUN_LIST"
declare -A PIDS
for entry in "${RUNS[@]}"; do
  name=${entry%%|*}; options=${entry#*|}
  # shellcheck disable=SC2086  # the options are words
  "$PYTHON" train.py --config "$CONFIG" --run-name "$name" --runs-dir "$RUNS_DIR" \
    --device "$DEVICE" --no-progress "data.root=$DATA_ROOT" $options training.num_steps=100000 training.checkpoint_every=1000 \
    training.media_every=1000 $EXTRA >"$RUNS_DIR/$name.log" 2>&1 &
  PIDS[$name]=$!
done
say "started ${!PIDS[*]}"

TEST_PID=
if [ "$DEVICE" = cuda ] && [ "$DEVICE_TESTS" != 0 ]; then
  timeout $((TRAIN_SECONDS - 10)) "$PYTHON" -m pytest -q -p no:cacheprovider --device cuda -m "device or cuda" \
    tests/model/test_glass.py tests/model/test_gma.py tests/model/test_lma.py tests/model/test_losses.py \
    tests/model/test_generation.py tests/model/test_glimpse.py tests/utils/evaluation/test_action_metrics.py \
    tests/test_play.py >"$OUT/pytest.log" 2>&1 &
  TEST_PID=$!
fi

end=$((SECONDS + TRAIN_SECONDS))
while [ $SECONDS -lt $end ]; do
  sleep 5
  alive=0
  for name in "${!PIDS[@]}"; do kill -0 "${PIDS[$name]}" 2>/dev/null && alive=$((alive + 1)); done
  [ $alive -eq 0 ] && { say "every run ended before the deadline"; break; }
done
for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null; done
for name in "${!PIDS[@]}"; do
  wait "${PIDS[$name]}"; status=$?
  say "$name: exit $status, $(grep -c '^step' "$RUNS_DIR/$name.log") log lines; $(grep '^step' "$RUNS_DIR/$name.log" | tail -1 | cut -c1-400)"
  tail -3 "$RUNS_DIR/$name.log" >>"$log"
done
[ -n "$TEST_PID" ] && { wait "$TEST_PID"; say "pytest exit $?: $(tail -1 "$OUT/pytest.log")"; }

# evaluation: every run at once, each run's checkpoints one after the other
evaluate_run() {
  local name=$1 folder="$RUNS_DIR/$1" steps step
  steps=$(ls "$folder/checkpoints" 2>/dev/null | sed -n 's/^step_\([0-9]*\)\.pth$/\1/p' | sort -n)
  local last; last=$(echo "$steps" | tail -1)
  [ -z "$last" ] && return
  for step in $last $(echo "$steps" | awk '$1 % 2000 == 0' | sort -rn); do
    # shellcheck disable=SC2086  # the options are words
    "$PYTHON" evaluate.py --run-name "$name" --runs-dir "$RUNS_DIR" --device "$DEVICE" --no-progress --step "$step" \
      $EVAL_ARGS >>"$folder/evaluate.log" 2>&1
    # shellcheck disable=SC2086
    [ "$step" = "$last" ] && "$PYTHON" evaluate.py --run-name "$name" --runs-dir "$RUNS_DIR" --device "$DEVICE" \
      --no-progress --step "$step" --protocol single_image $EVAL_ARGS >>"$folder/evaluate.log" 2>&1
  done
}
for name in "${!PIDS[@]}"; do evaluate_run "$name" & done
eval_end=$((SECONDS + EVAL_SECONDS))
while [ $SECONDS -lt $eval_end ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
for job in $(jobs -rp); do pkill -TERM -P "$job" 2>/dev/null; kill "$job" 2>/dev/null; done
say "evaluation done or stopped"

# what comes back: weights in float16 (8 files at most, 16 MiB each), two archives of the rest
for name in "${!PIDS[@]}"; do
  [ "$WEIGHTS" = all ] || [[ " $WEIGHTS " == *" $name "* ]] || continue
  "$PYTHON" - "$RUNS_DIR/$name/checkpoints/latest.pth" "$OUT/$name.pt" <<'EOF' >>"$log" 2>&1
import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
state["optimizer"] = {}
torch.save(state, sys.argv[2])
print(sys.argv[2], "step", state["step"])
EOF
done
names=($(printf '%s\n' "${!PIDS[@]}" | sort))
pack() {
  local archive=$1; shift
  local paths=() name last
  [ $# -gt 0 ] || return 0
  for name in "$@"; do
    paths+=("$RUNS_DIR/$name.log" "$RUNS_DIR/$name/config.yaml" "$RUNS_DIR/$name/metrics.jsonl"
            "$RUNS_DIR/$name/metrics" "$RUNS_DIR/$name/evaluate.log")
    last=$(ls "$RUNS_DIR/$name/media" 2>/dev/null | sed -n 's/^step_\([0-9]*\)_.*\.png$/\1/p' | sort -n | tail -1)
    [ -n "$last" ] && paths+=("$RUNS_DIR/$name/media/step_${last}_"*.png)
  done
  tar -czf "$OUT/$archive" --ignore-failed-read "${paths[@]}" 2>>"$log"
}
pack runs-1.tgz "${names[@]:0:3}"  # three runs' media and logs stay under the 16 MiB a returned file may have
pack runs-2.tgz "${names[@]:3:3}"
pack runs-3.tgz "${names[@]:6}"
ls -la "$OUT" >>"$log"
say "done"
