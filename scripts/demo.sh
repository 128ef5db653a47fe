#!/usr/bin/env bash
# The demo (`make demo`): bundled real images -> shards -> DINOv2 + SE(2) reconstruction
# pretraining of a tiny ViT -> evaluation of the final checkpoint (every task; the equivariance
# probe beside its floors in the context and the full view: scripts/demo_eval.py) -> results
# table + MLflow.
set -euo pipefail
DATA=${1:-data/demo}
RUN=${2:-runs/demo}
shift $(( $# < 2 ? $# : 2 ))
EXTRA=("$@")  # key=value overrides for the pretraining (e.g. data.backend=dali)
BIN=.venv/bin
start=$(date +%s)

echo "== 1/3 demo shards -> $DATA"
$BIN/equirecon data build-demo --out "$DATA"

echo "== 2/3 pretraining -> $RUN (a fresh run; the previous one stays in MLflow)"
rm -rf "$RUN"
$BIN/equirecon pretrain --config configs/demo_cpu.yaml data.path="$DATA" run.dir="$RUN" "${EXTRA[@]}"

echo "== 3/3 evaluation of the final checkpoint, and of the equivariance probe's floors, in two views"
$BIN/equirecon eval --checkpoint "$RUN/checkpoints/latest"  # every task, as the config says
# The probe's floors (raw pixels, a random-init ViT) in the config's view (context), the model and
# its floors in the full view, each in its own results file; then the results table.
$BIN/python scripts/demo_eval.py "$RUN"
end=$(date +%s)
echo
echo "demo finished in $((end - start)) s. Run directory: $RUN (config.yaml, metrics.jsonl, checkpoints/, evals/, recon_grid.png)"
echo "View it in MLflow:  $BIN/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlflow.db --port 5000"
