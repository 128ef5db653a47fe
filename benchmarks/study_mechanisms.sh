#!/usr/bin/env bash
# Mechanism checks of the method-effect study (issue #14, docs/results/study.md), for SETTING:
#   (a) reference levels of L_recon and the decoder on raw pixels (benchmarks/recon_levels.py),
#       and reconstruction alone: the +recon config with every SSL weight at 0 ("recononly"),
#       and the same at 4x the learning rate ("recononly_lr4": is the optimization the limit?);
#   (b) the backbone gradient of λ·L_recon vs L_SSL at every checkpoint of every +recon run,
#       with reconstruction grids (benchmarks/grad_ratio.py);
#   (c) K = 1 vs K = 2 (the +recon config with recon.k=1);
#   (d) λ = 5, the largest weight the paper calls stable (recon.lambda=5);
#   (e) what else the probe can read: rotation R² of the patch grid (all study runs) and of the
#       split head's z_equi slice (+recon runs), final checkpoints.
#
#   benchmarks/study_mechanisms.sh SETTING [SEED]
#
# The extra pretrainings (MECHS, default "recononly,lambda5,k1") run two at a time side by side
# (one thread each); their last checkpoint gets the study's probe on rotation, SE(2) and
# translation plus kNN and linear. Resumable.
# Environment: RUNS=runs/study  OUT=docs/results/study/SETTING  NICE=5  MECHS=...
set -euo pipefail
cd "$(dirname "$0")/.."

SETTING="${1:?usage: benchmarks/study_mechanisms.sh SETTING [SEED]}"
SEED="${2:-0}"
RUNS="${RUNS:-runs/study}"
OUT="${OUT:-docs/results/study/$SETTING}"
NICE="${NICE:-5}"
EQ=.venv/bin/equirecon
PY=.venv/bin/python
CFG="configs/study/${SETTING}_recon.yaml"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$RUNS/mlflow.db}"
mkdir -p "$RUNS" "$OUT"

# The SSL weights of each base method (all set to 0 for "reconstruction alone").
case "$($PY -c 'import sys
from equirecon.config import load_config
print(load_config(sys.argv[1]).method.name)' "$CFG")" in
  vicreg) NO_SSL=(method.vicreg_sim_weight=0 method.vicreg_var_weight=0 method.vicreg_cov_weight=0) ;;
  dinov2) NO_SSL=(method.dino_weight=0 method.ibot_weight=0 method.koleo_weight=0) ;;
  *) echo "no 'SSL weights 0' recipe for this method" >&2; exit 2 ;;
esac

variant() {  # variant NAME OVERRIDES...: pretrain and evaluate one mechanism run
  local name="$1" run="$RUNS/${SETTING}_$1_s$SEED" steps last
  shift
  steps=$($PY -c 'import sys
from equirecon.config import load_config
print(load_config(sys.argv[1]).train.max_steps)' "$CFG")
  if [[ ! -d "$(printf '%s/checkpoints/step_%08d' "$run" "$steps")" ]]; then
    echo "== $run: pretraining ($(date -u +%T))"
    nice -n "$NICE" "$EQ" pretrain --config "$CFG" "run.dir=$run" "train.seed=$SEED" "$@"
  fi
  last=$(ls -d "$run"/checkpoints/step_* | sort | tail -1)
  [[ -f "$run/evals/$(basename "$last").json" ]] && return
  # The last checkpoint only, and the tasks that answer the mechanism questions (a CPU budget;
  # the study runs have the full evaluation and the curves).
  nice -n "$NICE" "$EQ" eval --checkpoint "$last" --config "$CFG" --tasks equivariance,knn,linear \
    eval.equivariance.transforms=rotation,se2,translation
}

overrides() {  # the config overrides of one mechanism run
  case "$1" in
    recononly) echo "${NO_SSL[@]}" ;;
    recononly_lr4) echo "${NO_SSL[@]}" "train.base_lr=$($PY -c 'import sys
from equirecon.config import load_config
print(4 * load_config(sys.argv[1]).train.base_lr)' "$CFG")" ;;
    lambda5) echo recon.lambda=5 ;;
    k1) echo recon.k=1 ;;
    *) echo "unknown mechanism run $1 (recononly, recononly_lr4, lambda5, k1)" >&2; return 2 ;;
  esac
}

.venv/bin/python -c 'import mlflow; mlflow.MlflowClient().search_experiments()' > /dev/null
IFS=',' read -r -a MECH_LIST <<< "${MECHS:-recononly,lambda5,k1}"
for ((i = 0; i < ${#MECH_LIST[@]}; i += 2)); do
  pids=()
  for name in "${MECH_LIST[@]:i:2}"; do
    read -r -a extra <<< "$(overrides "$name")"
    variant "$name" "${extra[@]}" > "$RUNS/${SETTING}_${name}_s$SEED.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
done

probe_other() {  # probe_other RUN FEATURES: rotation R² of other features, last checkpoint
  local out="$1/evals/rotation_$2.json"
  [[ -f "$out" ]] && return
  nice -n "$NICE" "$EQ" eval --checkpoint "$1/checkpoints/latest" --config "$CFG" \
    --tasks equivariance eval.equivariance.transforms=rotation "eval.equivariance.features=$2" \
    --out "$out" --no-mlflow > /dev/null 2>&1
}
for run in "$RUNS/${SETTING}"_*_s*; do
  [[ -d "$run/checkpoints" ]] || continue
  probe_other "$run" grid
  if grep -q "enabled: true" <(sed -n '/^recon:/,/^[a-z]/p' "$run/config.yaml"); then
    probe_other "$run" equi
  fi
done

[[ -f "$OUT/recon_levels.json" ]] || nice -n "$NICE" $PY benchmarks/recon_levels.py \
  --config "$CFG" --steps 600 --out "$OUT/recon_levels.json"
for run in "$RUNS/${SETTING}"_recon_s* "$RUNS/${SETTING}_recononly_s$SEED" "$RUNS/${SETTING}_recononly_lr4_s$SEED" \
  "$RUNS/${SETTING}_k1_s$SEED"; do
  [[ -d "$run/checkpoints" ]] || continue
  out="$OUT/grad_ratio_$(basename "$run").json"
  [[ -f "$out" ]] || nice -n "$NICE" $PY benchmarks/grad_ratio.py "$run" --batches 4 --out "$out" \
    --grids "$OUT/grids"
done
echo "== mechanism checks: $OUT (recon_levels.json, grad_ratio_*.json, grids/)"
