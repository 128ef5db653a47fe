#!/usr/bin/env bash
# Continued pretraining at demo scale (issue #26): the demo baseline (configs/demo_cpu.yaml with
# recon off: plain DINOv2) -> `equirecon export` -> two continuations from the export, SE(2)
# reconstruction on and off, the same steps and the configs/continue recipe (backbone frozen,
# then at 0.2 x the heads' lr with its own warm-up) -> every task on the starting model (step 0
# of each continued run) and on the continued models, the equivariance probe in both views with
# its floors -> `equirecon report` of both runs and the page docs/results/continue_demo.md.
#
#   scripts/continue_demo.sh [DATA] [OUT]      defaults: data/demo, runs/continue_demo
#   TINY=1 scripts/continue_demo.sh DATA OUT   the whole chain on a tiny ViT, a few steps, tiny
#                                              probes: a smoke test (under a minute on 2 cores);
#                                              the page goes to OUT/continue_demo.md
#   DOC=PATH                                   where the page goes
#
# Resumable: each finished stage leaves OUT/.done/<stage> and a rerun skips it; a pretraining cut
# short resumes from its last checkpoint (the same command, a new process); the evaluations are
# resumed per checkpoint (OUT/.done/eval-RUN-STEP; remove those, and OUT/.done/evals, to
# evaluate again). The page and the report are rewritten by every run. The runs log to MLflow as
# `equirecon pretrain` does (sqlite:///mlflow.db here, or MLFLOW_TRACKING_URI).
set -euo pipefail
DATA=${1:-data/demo}
TINY=${TINY:-0}
if [ "$TINY" = 1 ]; then OUT=${2:-runs/continue_demo_tiny}; else OUT=${2:-runs/continue_demo}; fi
if [ "$TINY" = 1 ]; then DOC=${DOC:-$OUT/continue_demo.md}
else DOC=${DOC:-docs/results/continue_demo.md}; fi
BIN=${BIN:-.venv/bin}
CONFIG=configs/demo_cpu.yaml

if [ "$TINY" = 1 ]; then
  BASE_STEPS=4 CONT_STEPS=4 FREEZE=2 BACKBONE_WARMUP=1
  # tests/conftest.py's tiny ViT, and probes sized for seconds (tests/evals/test_harness_system.py)
  SIZE=(
    data.global_size=16 data.local_size=8 data.n_local=2 data.num_workers=0 model.embed_dim=32
    model.depth=2 model.num_heads=2 method.head_out_dim=64 method.head_hidden_dim=32
    method.head_bottleneck_dim=16 split.d_patch=48 recon.d_equi=16 recon.decoder_channels=16
    train.batch_size=8 train.warmup_steps=1 checkpoint.every_steps=2
    eval.equivariance.train_images=32 eval.equivariance.test_images=16 eval.equivariance.epochs=2
    eval.equivariance.hidden=32 eval.labelled_train_images=100 eval.labelled_test_images=50
    eval.linear.epochs=5 eval.homography.train_images=24 eval.homography.test_images=12
    eval.homography.views=2 eval.homography.epochs=2 eval.homography.channels=8
    eval.segmentation.train_images=20 eval.segmentation.test_images=10 eval.segmentation.epochs=2
    eval.depth.train_images=12 eval.depth.test_images=8 eval.depth.epochs=2 eval.batch_size=64
  )
else
  # The demo's 200 steps for each run; the backbone frozen for the first quarter of the
  # continuation (the heads' warm-up, 30 steps, inside it), then ramped over the next quarter.
  BASE_STEPS=200 CONT_STEPS=200 FREEZE=50 BACKBONE_WARMUP=50
  SIZE=()
fi
RECIPE=(
  train.freeze_backbone_steps=$FREEZE train.backbone_warmup_steps=$BACKBONE_WARMUP
  train.backbone_lr_scale=0.2
)
EXPORT=$OUT/baseline_export
STAGES=7
n=0
start=$(date +%s)

stage() {  # stage NAME WHAT CMD...: run CMD unless OUT/.done/NAME says it finished before
  local name=$1 what=$2 t0
  shift 2
  n=$((n + 1))
  if [ -f "$OUT/.done/$name" ]; then
    echo "== [$n/$STAGES] $what: done before, skipped"
    return
  fi
  echo "== [$n/$STAGES] $what"
  t0=$(date +%s)
  "$@"
  mkdir -p "$OUT/.done"
  touch "$OUT/.done/$name"
  echo "   [$n/$STAGES] done in $(($(date +%s) - t0)) s"
}

data() {
  if [ -f "$DATA/manifest.json" ]; then
    echo "   using the shards in $DATA"
  else
    $BIN/equirecon data build-demo --out "$DATA"
  fi
}

pretrain() {  # pretrain RUN_NAME key=value...
  local run=$1
  shift
  $BIN/equirecon pretrain --config $CONFIG data.path="$DATA" run.dir="$OUT/$run" "${SIZE[@]}" "$@"
}

continued() {  # continued RUN_NAME RECON(true|false)
  pretrain "$1" model.init="$EXPORT" recon.enabled="$2" train.max_steps=$CONT_STEPS "${RECIPE[@]}"
}

mkdir -p "$OUT"
echo "continued pretraining at demo scale: data $DATA, runs under $OUT, page $DOC (TINY=$TINY)"
stage data "demo shards -> $DATA" data
stage baseline "baseline: plain DINOv2, $BASE_STEPS steps -> $OUT/baseline" \
  pretrain baseline recon.enabled=false train.max_steps=$BASE_STEPS
stage export "export of the baseline -> $EXPORT" \
  $BIN/equirecon export --checkpoint "$OUT/baseline/checkpoints/latest" --out "$EXPORT"
stage continue_recon "continued +recon (SE(2)), $CONT_STEPS steps -> $OUT/continue_recon" \
  continued continue_recon true
stage continue_plain "continued -recon, $CONT_STEPS steps -> $OUT/continue_plain" \
  continued continue_plain false
# Step 0 of both runs holds the same backbone (the export): evaluated in each, so that each
# run's report shows its starting model; the floors (shape-only) once. Resumable per checkpoint.
stage evals "evaluations: the starting model (step 0) and step $CONT_STEPS of both runs" \
  $BIN/python scripts/continue_demo.py eval "$OUT" $CONT_STEPS
n=$((n + 1))
echo "== [$n/$STAGES] equirecon report of both runs -> $OUT/report, the page -> $DOC (every time)"
$BIN/python scripts/continue_demo.py table "$OUT" "$DOC" \
  "baseline steps=$BASE_STEPS" "continuation steps=$CONT_STEPS (each run)" \
  "recipe=${RECIPE[*]}" \
  "data=$DATA" "TINY=$TINY" "commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
echo "continued-pretraining demo finished in $(($(date +%s) - start)) s: $DOC"
