#!/usr/bin/env bash
# The method-effect study (issue #14, docs/results/study.md): baseline vs +recon, one flag
# apart, several seeds, every checkpoint probed, floors beside every number.
#
#   benchmarks/study.sh SETTING [SEEDS] [key=value ...]
#
# SETTING names configs/study/SETTING_{baseline,recon}.yaml (e.g. vicreg_rot); SEEDS is a
# comma-separated list of train.seed values (default "0,1,2"); further arguments are config
# overrides for both pretrainings. Per seed, the two pretrainings run side by side with one
# thread each (the same machine load for both members of a pair), then their final checkpoints
# get the full evaluation of the config's eval section, and every earlier checkpoint a rotation
# probe (the R²-vs-step curves). The floors (raw pixels, a random-init ViT of the same shape)
# are evaluated once with the same probe. Resumable: a finished pretraining or eval is skipped,
# an interrupted pretraining resumes from its last checkpoint; partial results are usable.
#
# Environment: RUNS=runs/study  OUT=docs/results/study/SETTING  NICE=5  FLOORS=1
#   MLFLOW_TRACKING_URI (default sqlite:///$RUNS/mlflow.db)
set -euo pipefail
cd "$(dirname "$0")/.."

SETTING="${1:?usage: benchmarks/study.sh SETTING [SEEDS] [key=value ...]}"
SEEDS="${2:-0,1,2}"
shift $(( $# < 2 ? $# : 2 ))
OVERRIDES=("$@")
RUNS="${RUNS:-runs/study}"
OUT="${OUT:-docs/results/study/$SETTING}"
NICE="${NICE:-5}"
FLOORS="${FLOORS:-1}"
EQ=.venv/bin/equirecon
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$RUNS/mlflow.db}"
mkdir -p "$RUNS" "$OUT"
TIMES="$RUNS/times.tsv"
[[ -f "$TIMES" ]] || printf 'run\tphase\tseconds\tfinished_utc\n' > "$TIMES"
for variant in baseline recon; do
  [[ -f "configs/study/${SETTING}_$variant.yaml" ]] || {
    echo "no configs/study/${SETTING}_$variant.yaml" >&2
    exit 2
  }
done

timed() {  # timed RUN PHASE CMD... : run CMD, append its wall seconds to $TIMES
  local run="$1" phase="$2" t0
  shift 2
  t0=$(date +%s)
  "$@"
  printf '%s\t%s\t%s\t%s\n' "$run" "$phase" "$(($(date +%s) - t0))" \
    "$(date -u +%FT%TZ)" >> "$TIMES"
}

final_step() {
  .venv/bin/python -c 'import sys
from equirecon.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).train.max_steps)' "$@"
}

pretrain() {  # pretrain VARIANT SEED
  local cfg="configs/study/${SETTING}_$1.yaml" run="$RUNS/${SETTING}_$1_s$2" steps
  steps=$(final_step "$cfg" "${OVERRIDES[@]}")
  if [[ -d "$(printf '%s/checkpoints/step_%08d' "$run" "$steps")" ]]; then
    echo "== $run: trained"
    return
  fi
  echo "== $run: pretraining ($(date -u +%T))"
  timed "$run" pretrain nice -n "$NICE" "$EQ" pretrain --config "$cfg" "run.dir=$run" \
    "train.seed=$2" "${OVERRIDES[@]}"
}

evaluate() {  # evaluate VARIANT SEED: full eval of the last checkpoint, rotation of the others
  local cfg="configs/study/${SETTING}_$1.yaml" run="$RUNS/${SETTING}_$1_s$2" ckpt step
  for ckpt in $(ls -d "$run"/checkpoints/step_* | sort -r); do
    step=$(basename "$ckpt")
    [[ -f "$run/evals/$step.json" ]] && continue
    if [[ "$ckpt" == "$(ls -d "$run"/checkpoints/step_* | sort | tail -1)" ]]; then
      echo "== $run: eval $step, all tasks ($(date -u +%T))"
      timed "$run" "eval_$step" nice -n "$NICE" "$EQ" eval --checkpoint "$ckpt" --config "$cfg"
    else
      echo "== $run: eval $step, rotation curve ($(date -u +%T))"
      timed "$run" "eval_$step" nice -n "$NICE" "$EQ" eval --checkpoint "$ckpt" --config "$cfg" \
        --tasks equivariance eval.equivariance.transforms=rotation eval.equivariance.repeats=1
    fi
  done
}

both() {  # both FUNCTION SEED LOG_SUFFIX: FUNCTION baseline and recon side by side; fail if either does
  local pids=() variant status=0
  for variant in baseline recon; do
    "$1" "$variant" "$2" >> "$RUNS/${SETTING}_${variant}_s$2$3" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  if [[ $status != 0 ]]; then
    echo "== $1 failed for seed $2: see $RUNS/${SETTING}_*_s$2$3" >&2
    exit "$status"
  fi
}

# Create the tracking store once: two processes creating a fresh sqlite store race.
.venv/bin/python -c 'import mlflow; mlflow.MlflowClient().search_experiments()' > /dev/null

RUN_DIRS=()
IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
for seed in "${SEED_LIST[@]}"; do
  RUN_DIRS+=("$RUNS/${SETTING}_baseline_s$seed" "$RUNS/${SETTING}_recon_s$seed")
  both pretrain "$seed" .log
  both evaluate "$seed" .eval.log
done

if [[ "$FLOORS" == 1 ]]; then  # the floors depend only on the model shape and the probe
  first="${RUN_DIRS[0]}"
  floor() {  # floor NAME: a floor with the baseline's shape and probe
    [[ -f "$first/evals/floor_$1.json" ]] && return
    echo "== floor $1 ($(date -u +%T))"
    timed "$first" "floor_$1" nice -n "$NICE" "$EQ" eval --checkpoint \
      "$first/checkpoints/latest" --config "configs/study/${SETTING}_baseline.yaml" --floor "$1"
  }
  floor pixels > "$RUNS/${SETTING}_floor_pixels.log" 2>&1 &
  p1=$!
  floor random > "$RUNS/${SETTING}_floor_random.log" 2>&1 &
  p2=$!
  wait "$p1" && wait "$p2"
fi

"$EQ" report "${RUN_DIRS[@]}" --out "$OUT" --no-mlflow
.venv/bin/python benchmarks/repro_summary.py "${RUN_DIRS[@]}" --times "$TIMES" \
  --out "$OUT/summary.md"
echo "== report: $OUT (table.md, plots/, summary.md)"
