#!/usr/bin/env bash
# Small-scale reproduction of the paper's central claim on CPU: DINOv2 vs DINOv2 + SE(2)
# transformed-image reconstruction, same model, data, steps and seeds (issue #9).
#
#   benchmarks/repro_small.sh [SEEDS] [key=value ...]
#
# SEEDS is a comma-separated list of train.seed values (default "0,1"); further arguments are
# config overrides applied to both runs (e.g. train.max_steps=1200 for the ~30-minute size).
# For each seed it pretrains configs/repro/baseline.yaml and configs/repro/recon.yaml (identical
# but for recon.enabled), evaluates both final checkpoints on every task family
# (`equirecon eval --checkpoint RUN/checkpoints/latest`, eval.* settings read from the config
# file, so they can be changed and re-run with SKIP_DONE=0 without retraining), evaluates the floors (raw pixels, a
# random-init ViT) once, then writes `equirecon report` (table + plots) and a per-variant
# mean ± std summary to $OUT.
#
# Environment (all optional):
#   RUNS=runs/repro                   run directories ($RUNS/<variant>_s<seed>), gitignored
#   OUT=docs/results/repro_small      report folder
#   MLFLOW_TRACKING_URI               default: sqlite:///$RUNS/mlflow.db (not the repo's mlflow.db)
#   NICE=10                           niceness of every training / eval process
#   SKIP_DONE=1                       skip a pretraining whose final checkpoint exists and an
#                                     eval whose JSON exists (resume an interrupted script)
#   FLOORS=1                          also evaluate the pixel and random-init floors
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS="${1:-0,1}"
shift || true
OVERRIDES=("$@")
RUNS="${RUNS:-runs/repro}"
OUT="${OUT:-docs/results/repro_small}"
NICE="${NICE:-10}"
SKIP_DONE="${SKIP_DONE:-1}"
FLOORS="${FLOORS:-1}"
EQ=.venv/bin/equirecon
mkdir -p "$RUNS"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$RUNS/mlflow.db}"
TIMES="$RUNS/times.tsv"
[[ -f "$TIMES" ]] || printf 'run\tphase\tseconds\tfinished_utc\n' > "$TIMES"

timed() {  # timed RUN PHASE CMD... : run CMD, append its wall seconds to $TIMES
  local run="$1" phase="$2"
  shift 2
  local t0
  t0=$(date +%s)
  "$@"
  printf '%s\t%s\t%s\t%s\n' "$run" "$phase" "$(($(date +%s) - t0))" \
    "$(date -u +%FT%TZ)" >> "$TIMES"
}

final_step() {  # the step the config (with overrides) trains to
  .venv/bin/python -c 'import sys
from equirecon.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).train.max_steps)' "$@"
}

RUN_DIRS=()
IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
for seed in "${SEED_LIST[@]}"; do
  for variant in baseline recon; do
    run="$RUNS/${variant}_s${seed}"
    RUN_DIRS+=("$run")
    args=(--config "configs/repro/$variant.yaml" "run.dir=$run" "train.seed=$seed"
      "${OVERRIDES[@]}")
    steps=$(final_step "configs/repro/$variant.yaml" "${OVERRIDES[@]}")
    ckpt=$(printf '%s/checkpoints/step_%08d' "$run" "$steps")
    if [[ "$SKIP_DONE" == 1 && -d "$ckpt" ]]; then
      echo "== $run: $ckpt exists, pretraining skipped"
    else
      echo "== $run: pretraining ($(date -u +%T))"
      timed "$run" pretrain nice -n "$NICE" "$EQ" pretrain "${args[@]}"
    fi
    result=$(printf '%s/evals/step_%08d.json' "$run" "$steps")
    if [[ "$SKIP_DONE" == 1 && -f "$result" ]]; then
      echo "== $run: $result exists, eval skipped"
    else
      echo "== $run: eval ($(date -u +%T))"
      timed "$run" eval nice -n "$NICE" "$EQ" eval --checkpoint "$run/checkpoints/latest" \
        --config "configs/repro/$variant.yaml"
    fi
  done
done

if [[ "$FLOORS" == 1 ]]; then  # floors depend only on the model shape: once, on the first run
  first="${RUN_DIRS[0]}"
  for floor in pixels random; do
    if [[ "$SKIP_DONE" == 1 && -f "$first/evals/floor_$floor.json" ]]; then continue; fi
    echo "== floor $floor ($(date -u +%T))"
    timed "$first" "floor_$floor" nice -n "$NICE" "$EQ" eval \
      --checkpoint "$first/checkpoints/latest" --config configs/repro/baseline.yaml --floor "$floor"
  done
fi

mkdir -p "$OUT"
"$EQ" report "${RUN_DIRS[@]}" --out "$OUT" --no-mlflow
.venv/bin/python benchmarks/repro_summary.py "${RUN_DIRS[@]}" --times "$TIMES" \
  --out "$OUT/summary.md"
echo "== report: $OUT (table.md, plots/, summary.md)"
