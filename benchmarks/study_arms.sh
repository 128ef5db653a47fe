#!/usr/bin/env bash
# The positive control of the method-effect study (issue #25 point 3): can the fixed probe see θ
# in a ViT trained at this scale, in both probe views, when the training objective must put θ
# into the global vector? Until a control sits far above the floors, no method arm is read.
#
#   benchmarks/study_control.sh [SEEDS] [key=value ...]
#
# Arms (VICReg, rotation, the study's ViT and data, 1,200 x 32, peak lr 4x the paper rule
# (train.base_lr=8e-3, where the reconstruction engages), one flag apart):
#   lambda0  g on, λ = 0: the rotation in the SSL views, decoders present but untrained
#   control  lambda0 + recon.theta_head_weight=1: a head regresses θ from the global vectors
#            [CLS; mean patch] of f(u) and f(g_θ u) (an extra backbone pass over u)
#   control25  the same head at weight 25 (VICReg's invariance and variance weights)
#   thetaonly  the head alone: VICReg's three weights 0, 600 steps (can this ViT learn θ?)
# ARMS (default "lambda0 control") chooses the arms; they train side by side.
# The two arms of a seed train side by side, one thread each. Each final checkpoint, and the
# floors (random-init ViT, raw pixels), get the study probe (configs/study/vicreg_rot_*.yaml
# eval section: global [CLS; mean patch], 1,024 x 8 θ draws, 30 epochs, 512 held-out images)
# for rotation and SE(2), in both views: `full` (zero fill visible, the paper's likely
# protocol) and `context` (content only). Every result is its own file (RUN/evals/VIEW.json),
# so the views never overwrite each other. Resumable: finished steps are skipped.
#
# Environment: RUNS=runs/study_control  OUT=docs/results/study/control  NICE=5
#   TINY=1: a few steps and a tiny probe (the CPU test of this script)
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS="${1:-0}"
shift $(($# < 1 ? $# : 1))
OVERRIDES=("$@")
RUNS="${RUNS:-runs/study_control}"
OUT="${OUT:-docs/results/study/control}"
NICE="${NICE:-5}"
EQ=.venv/bin/equirecon
CFG=configs/study/vicreg_rot_recon.yaml
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS" "$OUT"

COMMON=(train.base_lr=8e-3 recon.lambda=0)
PROBE=(eval.equivariance.transforms=rotation,se2 eval.equivariance.features=global)
if [[ "${TINY:-0}" == 1 ]]; then
  COMMON+=(train.max_steps=4 train.warmup_steps=1 checkpoint.every_steps=4 train.batch_size=8)
  PROBE+=(eval.equivariance.train_images=32 eval.equivariance.test_images=16
    eval.equivariance.views_per_image=2 eval.equivariance.epochs=1)
fi
declare -A ARM=([lambda0]="" [control]="recon.theta_head_weight=1"
  [control25]="recon.theta_head_weight=25"
  [thetaonly]="recon.theta_head_weight=1 method.vicreg_sim_weight=0 method.vicreg_var_weight=0
    method.vicreg_cov_weight=0 train.max_steps=600 checkpoint.every_steps=600")
read -r -a ARM_LIST <<< "${ARMS:-lambda0 control}"
export ARMS="${ARM_LIST[*]}"

pretrain() {  # pretrain ARM SEED
  local run="$RUNS/$1_s$2"
  if [[ -f "$run/checkpoints/latest" ]] && [[ -f "$run/done" ]]; then
    echo "== $run: trained"
    return
  fi
  echo "== $run: pretraining ($(date -u +%T))"
  # shellcheck disable=SC2086  # ARM values are zero or one key=value
  nice -n "$NICE" "$EQ" pretrain --config "$CFG" "run.dir=$run" "train.seed=$2" \
    "${COMMON[@]}" ${ARM[$1]} "${OVERRIDES[@]}"
  touch "$run/done"
}

probe() {  # probe RUN TAG [--floor F]: both views of the final checkpoint, one file each
  local run="$1" tag="$2" view
  shift 2
  for view in full context; do
    local out="$run/evals/${tag}_$view.json"
    [[ -f "$out" ]] && continue
    echo "== $run: probe $tag, view $view ($(date -u +%T))"
    nice -n "$NICE" "$EQ" eval --checkpoint "$run/checkpoints/latest" --config "$CFG" \
      --tasks equivariance "${PROBE[@]}" "eval.equivariance.view=$view" --out "$out" \
      --no-mlflow "$@"
  done
}

IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
for seed in "${SEED_LIST[@]}"; do
  pids=()
  for arm in "${ARM_LIST[@]}"; do
    pretrain "$arm" "$seed" >> "$RUNS/${arm}_s$seed.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  pids=()
  for arm in "${ARM_LIST[@]}"; do
    probe "$RUNS/${arm}_s$seed" model >> "$RUNS/${arm}_s$seed.eval.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
done

first="$RUNS/lambda0_s${SEED_LIST[0]}"
pids=()
for floor in random pixels; do
  probe "$first" "floor_$floor" --floor "$floor" >> "$RUNS/floor_$floor.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

.venv/bin/python - "$RUNS" "$OUT" "${SEED_LIST[@]}" <<'PY'
import json, os, sys
from pathlib import Path

runs, out, seeds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
first = runs / f"lambda0_s{seeds[0]}" / "evals"


def r2(path: Path, transform: str) -> float | None:
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())["metrics"]
    key = next((k for k in metrics if k.endswith(f"{transform}_r2")), None)
    return None if key is None else metrics[key]


rows = ["| view | arm | seed | rotation R² | SE(2) R² |", "|---|---|---|---:|---:|"]
fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
for view in ("full", "context"):
    arms = sorted({*os.environ["ARMS"].split(), *(p.name.rsplit("_s", 1)[0] for p in runs.glob("*_s*") if p.is_dir())})
    for arm in arms:
        for seed in seeds:
            f = runs / f"{arm}_s{seed}" / "evals" / f"model_{view}.json"
            if not f.parent.is_dir():
                continue
            rows.append(f"| {view} | {arm} | {seed} | {fmt(r2(f, 'rotation'))} | {fmt(r2(f, 'se2'))} |")
    for floor in ("random", "pixels"):
        f = first / f"floor_{floor}_{view}.json"
        rows.append(f"| {view} | floor: {floor} | – | {fmt(r2(f, 'rotation'))} | {fmt(r2(f, 'se2'))} |")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
echo "== table: $OUT/table.md"
