#!/usr/bin/env bash
# All GPU performance checks in one run (< 8 min on one H100/H200), one results table:
# ViT-L/16 DINOv2 + SE(2) recon steps vs recon off (img/s, MFU, memory, overhead), attention
# backends, device-side transform cost, torch.compile on/off. Needs only torch + timm.
#   bash benchmarks/gpu_suite.sh                 # the GPU run (configs/paper/dinov2_vitl16_100ep.yaml)
#   bash benchmarks/gpu_suite.sh --tiny          # tiny ViT on the CPU (tests/benchmarks)
#   bash benchmarks/gpu_suite.sh --batch 32 --checks step,attention   # see --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m benchmarks.gpu_suite "$@"
