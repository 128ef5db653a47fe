#!/usr/bin/env bash
# The demo (`make demo`): bundled real images -> shards -> DINOv2 + SE(2) reconstruction
# pretraining of a tiny ViT -> evaluation of the final checkpoint -> results table + MLflow.
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

echo "== 3/3 evaluation of the final checkpoint, and of the floors (equivariance probe)"
$BIN/equirecon eval --checkpoint "$RUN/checkpoints/latest"
for floor in pixels random; do  # the same probe on raw pixels and on a random-init ViT
  $BIN/equirecon eval --checkpoint "$RUN/checkpoints/latest" --floor "$floor" --tasks equivariance
done

$BIN/python - "$RUN" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l]
first, last = rows[0], rows[-1]
evals = sorted((run / "evals").glob("step_????????.json"))
result = json.loads(evals[-1].read_text()) if evals else {}
metrics = result.get("metrics", {})
floors = {}
for name in ("pixels", "random"):
    path = run / "evals" / f"floor_{name}.json"
    floors[name] = json.loads(path.read_text())["metrics"] if path.is_file() else {}
print("\n== results (" + str(run) + ")")
print(f"{'metric':<34} {'first step':>11} {'last step':>11}")
for k in ("train/loss_total", "train/loss_ssl", "train/loss_recon"):
    if k in last:
        print(f"{k:<34} {first.get(k, float('nan')):>11.4f} {last[k]:>11.4f}")
print(f"{'train/img_per_s (last step)':<34} {'':>11} {last['train/img_per_s']:>11.1f}")
probe = result.get("eval", {}).get("equivariance", {})
print(f"\nequivariance R² ({probe.get('view', '?')} view: no zero fill visible; "
      f"features {probe.get('features', '?')}), beside its floors:")
print(f"{'metric':<34} {'model':>11} {'pixels':>11} {'random ViT':>11}")
for k, v in metrics.items():
    if k.startswith("eval/equivariance/") and k.count("/") == 2:  # not the probe-qualified copies
        cells = [floors[f].get(k) for f in ("pixels", "random")]
        text = " ".join(f"{c:>11.4f}" if c is not None else f"{'-':>11}" for c in cells)
        print(f"{k:<34} {v:>11.4f} {text}")
print()
for k, v in metrics.items():
    if not k.startswith("eval/equivariance/"):
        print(f"{k:<34} {'':>11} {v:>11.4f}")
PY
end=$(date +%s)
echo
echo "demo finished in $((end - start)) s. Run directory: $RUN (config.yaml, metrics.jsonl, checkpoints/, evals/, recon_grid.png)"
echo "View it in MLflow:  $BIN/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlflow.db --port 5000"
