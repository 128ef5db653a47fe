#!/usr/bin/env bash
# The method-effect study, round 3 (issue #25): arms one flag apart in the VICReg-rotation
# setting, a positive control, both probe views, floors, and the paired table.
#
#   benchmarks/study_arms.sh [SEEDS] [key=value ...]        e.g. ARMS="baseline lambda0" ... 0,1,2
#
# Setting: configs/study/vicreg_rot_recon.yaml (the study's ViT and clip-art data), 1,200 x 32,
# peak lr 4x the paper rule (train.base_lr=8e-3, where the reconstruction engages).
# An arm's name is a base and optional suffixes, one flag each (benchmarks/study_arms.lib.sh):
#   baseline, lambdaN, control, control25, thetaonly; -disk, -dequiN, -stepsN.
# ARMS (default "baseline lambda0") chooses the arms; JOBS (default 2) trainings run side by
# side, one thread each, each followed by its probes. Every final checkpoint, and the floors
# (random-init ViT, raw pixels), get the study probe (the config's eval section: global
# [CLS; mean patch], 1,024 x 8 θ draws, 30 epochs, 512 held-out images) for rotation and SE(2)
# (RUNS/floors/evals/, once per runs folder: they depend on the ViT's shape and the probe only)
# in the views `full` (zero fill visible, the paper's likely protocol) and `context` (content
# only), plus `disk` for -disk arms; kNN and linear top-1 on the labelled clip art. Each result
# is its own file (RUN/evals/model_VIEW.json, model_cls.json), so nothing overwrites anything.
# CURVE_STEPS (default "300,600,900") adds the probe of those checkpoints (R² against steps), in
# the views CURVE_VIEWS (default: the arm's views; "full" where only that view has range).
# FEATURE_VIEWS (default "full") are the views in which the final checkpoint is also probed on
# the other features (`features_of`: grid2 = [CLS; patch tokens pooled 2 x 2], equi = the split
# head's z_equi), into RUN/evals/model_VIEW-FEATURE.json; the random-init floor gets grid2 too.
# Resumable: finished trainings and results are skipped. A job that finishes archives its
# result files (evals/*.json and the final step, a few KB) to OUT/results/ARM_sSEED, which is
# committed: new files are added, an archived file is never overwritten (a differing one is
# reported; delete it to replace it). At the end benchmarks/study_table.py writes the table of
# the whole archive, with paired differences by seed, to OUT/table.md, so seeds trained in
# different sessions (or machines) meet in one table.
#
# Environment: RUNS=runs/study_arms  OUT=docs/results/study/round3  NICE=5  JOBS=2
#   TINY=1: a few steps and a tiny probe (the CPU test of this script)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/study_arms.lib.sh  # arm_overrides, views_of

SEEDS="${1:-0}"
shift $(($# < 1 ? $# : 1))
OVERRIDES=("$@")
RUNS="${RUNS:-runs/study_arms}"
if [[ "${TINY:-0}" == 1 ]]; then OUT="${OUT:-$RUNS/table}"; fi  # a smoke test writes no docs
OUT="${OUT:-docs/results/study/round3}"
NICE="${NICE:-5}"
JOBS="${JOBS:-2}"
CURVE_STEPS="${CURVE_STEPS-300,600,900}"
FEATURE_VIEWS="${FEATURE_VIEWS-full}"
EQ="${EQ:-.venv/bin/equirecon}"
CFG=configs/study/vicreg_rot_recon.yaml
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"

COMMON=(train.base_lr=8e-3)
LAST=()  # after the arm's flags
PROBE=(eval.equivariance.transforms=rotation,se2 eval.equivariance.features=global)
CLS=()
if [[ "${TINY:-0}" == 1 ]]; then
  LAST+=(train.max_steps=4 train.warmup_steps=1 checkpoint.every_steps=2 checkpoint.keep_every=2
    train.batch_size=8)
  PROBE+=(eval.equivariance.train_images=32 eval.equivariance.test_images=16
    eval.equivariance.views_per_image=2 eval.equivariance.epochs=1)
  CLS+=(eval.labelled_train_images=64 eval.labelled_test_images=32 eval.linear.epochs=1)
  CURVE_STEPS="${CURVE_STEPS:+2}"
fi

pretrain() {  # pretrain ARM SEED
  local run="$RUNS/$1_s$2" flags
  if [[ -f "$run/done" ]]; then echo "== $run: trained"; return; fi
  mapfile -t flags < <(arm_overrides "$1")
  echo "== $run: pretraining ${flags[*]} ($(date -u +%T))"
  nice -n "$NICE" "$EQ" pretrain --config "$CFG" "run.dir=$run" "train.seed=$2" \
    "${COMMON[@]}" "${flags[@]}" "${LAST[@]}" "${OVERRIDES[@]}"
  touch "$run/done"
}

probe() {  # probe RUN CHECKPOINT TAG VIEWS [--floor F]: one file per view
  local run="$1" ckpt="$2" tag="$3" views="$4" view
  shift 4
  for view in $views; do
    local out="$run/evals/${tag}_$view.json"
    [[ -f "$out" ]] && continue
    echo "== $run: probe $tag, view $view ($(date -u +%T))"
    nice -n "$NICE" "$EQ" eval --checkpoint "$ckpt" --config "$CFG" --tasks equivariance \
      "${PROBE[@]}" "eval.equivariance.view=$view" --out "$out" --no-mlflow "$@"
  done
}

probe_features() {  # probe_features RUN CHECKPOINT VIEWS FEATURES [--floor F]: model_VIEW-F.json
  local run="$1" ckpt="$2" views="$3" features="$4" view feature
  shift 4
  for view in $views; do
    for feature in $features; do
      local out="$run/evals/${TAG_PREFIX:-model}_$view-$feature.json" flags=()
      [[ -f "$out" ]] && continue
      case "$feature" in
        grid[0-9]*) flags=(eval.equivariance.features=grid "eval.equivariance.grid=${feature#grid}") ;;
        *) flags=("eval.equivariance.features=$feature") ;;
      esac
      echo "== $run: probe ${TAG_PREFIX:-model}, view $view, features $feature ($(date -u +%T))"
      nice -n "$NICE" "$EQ" eval --checkpoint "$ckpt" --config "$CFG" --tasks equivariance \
        "${PROBE[@]}" "eval.equivariance.view=$view" "${flags[@]}" --out "$out" --no-mlflow "$@"
    done
  done
}

classify() {  # classify RUN CHECKPOINT TAG [--floor F]: kNN and linear top-1
  local run="$1" ckpt="$2" out="$1/evals/$3_cls.json"
  shift 3
  [[ -f "$out" ]] && return
  echo "== $run: kNN and linear ($(date -u +%T))"
  nice -n "$NICE" "$EQ" eval --checkpoint "$ckpt" --config "$CFG" --tasks knn,linear \
    "${CLS[@]}" --out "$out" --no-mlflow "$@"
}

archive() {  # archive RUN: add its result files to OUT/results/NAME, never overwriting one
  local run="$1" dest="$OUT/results/$(basename "$1")" file
  mkdir -p "$dest/evals"
  if [[ -f "$run/checkpoints/latest" ]]; then
    sed -E 's/.*step_0*([0-9]+).*/\1/' "$run/checkpoints/latest" > "$run/final_step"
  fi
  if [[ -f "$run/metrics.jsonl" ]]; then
    .venv/bin/python benchmarks/study_table.py "$run" --train-losses > "$run/train_losses.json"
  fi
  for file in "$run"/evals/*.json "$run/final_step" "$run/train_losses.json"; do
    [[ -f "$file" ]] || continue
    local to="$dest/${file#"$run"/}"
    if [[ ! -f "$to" ]]; then cp "$file" "$to"
    elif ! cmp -s "$file" "$to"; then echo "== $to: archived result kept; $file differs (delete to replace)"
    fi
  done
}

job() {  # job ARM SEED: train, then every probe of this run
  local arm="$1" seed="$2" run="$RUNS/$1_s$2" step views
  views="$(views_of "$arm")"
  pretrain "$arm" "$seed"
  probe "$run" "$run/checkpoints/latest" model "$views"
  classify "$run" "$run/checkpoints/latest" model
  probe_features "$run" "$run/checkpoints/latest" "$FEATURE_VIEWS" "$(features_of "$arm")"
  IFS=',' read -r -a steps <<< "$CURVE_STEPS"
  for step in "${steps[@]}"; do
    local ckpt
    ckpt="$run/checkpoints/$(printf 'step_%08d' "$step")"
    [[ -d "$ckpt" ]] && probe "$run" "$ckpt" "$(basename "$ckpt")" "${CURVE_VIEWS:-$views}"
  done
  archive "$run"
}

floors() {  # floors CHECKPOINT: probed once per runs folder (RUNS/floors/evals), every view
  local ckpt="$1" floor
  for floor in random pixels; do
    probe "$RUNS/floors" "$ckpt" "floor_$floor" "full context disk" --floor "$floor"
    classify "$RUNS/floors" "$ckpt" "floor_$floor" --floor "$floor"
  done
  TAG_PREFIX=floor_random probe_features "$RUNS/floors" "$ckpt" "$FEATURE_VIEWS" grid2 --floor random
  archive "$RUNS/floors"
}

read -r -a ARM_LIST <<< "${ARMS:-baseline lambda0}"
for arm in "${ARM_LIST[@]}"; do arm_overrides "$arm" > /dev/null; done  # fail before training
IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
failed=0
running=0
for seed in "${SEED_LIST[@]}"; do
  for arm in "${ARM_LIST[@]}"; do
    if ((running >= JOBS)); then wait -n || failed=1; running=$((running - 1)); fi
    job "$arm" "$seed" >> "$RUNS/${arm}_s$seed.log" 2>&1 &
    running=$((running + 1))
  done
done
while ((running > 0)); do wait -n || failed=1; running=$((running - 1)); done
first="$RUNS/${ARM_LIST[0]}_s${SEED_LIST[0]}"
if [[ -f "$first/done" ]]; then
  floors "$first/checkpoints/latest" >> "$RUNS/floors.log" 2>&1 || failed=1
fi

mkdir -p "$OUT/results"
.venv/bin/python benchmarks/study_table.py "$OUT/results" --out "$OUT/table.md"
if ((failed)); then echo "== some jobs failed: see $RUNS/*.log" >&2; exit 1; fi
