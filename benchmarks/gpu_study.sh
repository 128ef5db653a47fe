#!/usr/bin/env bash
# The method-effect study's decisive comparison on one GPU (issue #25 point 6): the study's
# VICReg-rotation setting at ViT-S/16, 224 px (configs/study/gpu_vicreg_rot_recon.yaml), arms
# one flag apart, run one after another: baseline (recon.enabled=false), lambda0 (g on, λ = 0)
# and lambda4 (λ = 4); after each arm the study probe (global [CLS; mean patch], rotation and
# SE(2), views `full` and `context`; `disk` too for -disk arms) and kNN/linear top-1, the floors
# (random-init ViT, raw pixels) once after the first arm, then benchmarks/study_table.py's table.
#
#   bash benchmarks/gpu_study.sh --build-data    # here, on the CPU: data/gpu_study (~39 MiB)
#   bash benchmarks/gpu_study.sh                 # on the GPU machine (needs CUDA)
#   bash benchmarks/gpu_study.sh --tiny          # the whole script on the CPU, tiny ViT, ~30 s
#   bash benchmarks/gpu_study.sh --arms "baseline lambda0 lambda4-disk" --steps 400 [key=value ...]
#
# GPU call (device tool `run`; the data is gitignored, so it is carried; nothing else is needed:
# the run needs only torch, timm, PyYAML, Pillow, numpy, tqdm, which the GPU image's python3 has
# (no wheels: mlflow, webdataset, DALI are not imported). The repo runs from PYTHONPATH=., each
# step being `python3 -m equirecon pretrain|eval ...` called in one process (equirecon.cli.main:
# torch and CUDA start once), tracking off, evals --no-mlflow):
#   run(command="bash benchmarks/gpu_study.sh", carry=["data/gpu_study"], timeout_s=600)
# Results come back in $OUT: results.json (every arm's probes, timings, throughput),
# table.md (study_table.py) and gpu_study.log; the runs (checkpoints) stay on the machine.
#
# Arms (ARMS env or --arms, default "baseline lambda0 lambda4"): the grammar of
# benchmarks/study_arms.sh, from benchmarks/study_arms.lib.sh (baseline, lambdaN, control,
# control25, thetaonly; suffixes -disk -> recon.fill=disk, -dequiN -> recon.d_equi=N).
#
# Data: 2,300 distinct images of Open Clip Art (benchmarks/study_data.py --max-images 2300
# --max-side 224, split 80/20: 1,866 / 434 natural, 633 / 146 labelled in 10 classes), PNG
# shards, ~39 MiB without the resize cache (the device tool carries <= 64 MiB in all). The
# torch reader needs train.batch_size x data.num_workers <= 1,866 (checked before training).
#
# Size and time (one H100 SXM, 989 TFLOP/s dense bf16; nothing of this has run on a GPU yet):
#   FLOPs: ViT-S/16 at 224 is 9.1 GFLOP forward per image (4.6 GMAC; pretrain.meters), a VICReg
#     step 2 views x 3 (fwd + bwd) = 54.5 GFLOP per image, + ~2 for the two decoders (0.18 GMAC
#     each forward, docs/benchmarks.md): ~57 GFLOP per image. At 35% MFU (346 TFLOP/s) that is
#     ~6,000 img/s; eager ViT-S is more likely at 15-25%: 2,600-4,300 img/s, 30 ms a step of 128.
#   Loader: our torch reader, 2 x 224 px views with VICReg's full augmentations, measured here
#     at 13.4 ms CPU per image (one AMD EPYC core) -> 14 workers ~1,000 img/s at best. With one
#     shard of 1,866 images each worker makes one batch of 128 per epoch (14 steps) and the
#     workers restart every epoch, so loading and GPU steps do not overlap: per epoch ~1.7 s
#     (a batch) + ~0.3 s (worker start) + 14 x 30 ms ~ 2.4 s -> ~750 img/s. The run is loader
#     bound (train/data_wait_frac in the timings table says by how much).
#   Training: 500 steps x 128 = 64,000 images (34 epochs) -> ~85 s per arm + ~15 s start and
#     checkpoint. Probes per arm (fp32): 2 views x 2 transforms x (1,024 + 512) x 9 ViT-S
#     forwards (~55k) + decoding 1,536 images per call, kNN/linear on 779 images -> ~35 s;
#     floors once ~55 s; torch/CUDA start ~20 s. Total ~3 x 135 + 75 ~ 480 s (8 minutes).
#     At half the loader speed ~11 minutes: BUDGET_S (default 560 s on a GPU) skips an arm that
#     would not fit (estimated from the arms before it) and says so, so that a 600 s call
#     still brings results back; on the same (warm) machine rerun the command for the rest
#     (finished steps are kept), on a fresh one run the skipped arms with --arms.
#
# Options: --build-data | --tiny | --arms "A B" | --steps N | --batch N | --data DIR |
#   --runs DIR | --seed N | -h; other arguments are key=value overrides of every pretraining.
# Environment: ARMS, SEED=0, RUNS=runs/gpu_study, DATA (data/gpu_study; --tiny: data/clipart),
#   RESULTS (default $OUT when set, else RUNS), BUDGET_S, PYTHON (default .venv/bin/python if
#   present, else python3), SRC (clip-art source for --build-data, /usr/share/openclipart/png).
# Resumable: a finished training (RUN/done) and existing result files are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/study_arms.lib.sh

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_study.sh: $*" >&2; exit 2; }

MODE=run
TINY=0
ARMS="${ARMS:-baseline lambda0 lambda4}"
SEED="${SEED:-0}"
RUNS="${RUNS:-runs/gpu_study}"
DATA="${DATA:-}"
STEPS=""
BATCH=""
OVERRIDES=()
while (($#)); do
  case "$1" in
    --build-data) MODE=build ;;
    --tiny) TINY=1 ;;
    --arms) ARMS="${2:?--arms needs a list}"; shift ;;
    --steps) STEPS="${2:?--steps needs a number}"; shift ;;
    --batch) BATCH="${2:?--batch needs a number}"; shift ;;
    --data) DATA="${2:?--data needs a folder}"; shift ;;
    --runs) RUNS="${2:?--runs needs a folder}"; shift ;;
    --seed) SEED="${2:?--seed needs a number}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *=*) OVERRIDES+=("$1") ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the repo's packages, installed or not

# ---- --build-data: the 224 px clip-art shards, here on the CPU --------------------------------
if [[ "$MODE" == build ]]; then
  DATA="${DATA:-data/gpu_study}"
  if [[ -f "$DATA/manifest.json" && -f "$DATA/study_data.json" && ! -d "$DATA/.resized" ]]; then
    echo "== $DATA is built ($(du -sh "$DATA" | cut -f1)); delete it to rebuild"
    exit 0
  fi
  "$PY" benchmarks/study_data.py --src "${SRC:-/usr/share/openclipart/png}" --out "$DATA" \
    --max-side 224 --max-images 2300 --val-percent 20 --min-per-class 40 --max-per-class 100 \
    --workers "${WORKERS:-2}"
  rm -rf "$DATA/.resized"  # the resize cache: the shards hold every image
  mib=$(($(du -sk "$DATA" | cut -f1) / 1024))
  echo "== $DATA: $mib MiB; GPU call: run(command=\"bash benchmarks/gpu_study.sh\", carry=[\"$DATA\"])"
  ((mib <= 48)) || die "$DATA is $mib MiB: over the 48 MiB planned for the device tool's 64 MiB carry"
  exit 0
fi

# ---- run: arms, probes, floors, table -----------------------------------------------------------
CFG=configs/study/gpu_vicreg_rot_recon.yaml
if ((TINY)); then DATA="${DATA:-data/clipart}"; else DATA="${DATA:-data/gpu_study}"; fi
[[ -f "$DATA/manifest.json" ]] || {
  if ((TINY)); then die "no data at $DATA: build it with 'python benchmarks/study_data.py --out data/clipart', or pass --data DIR (shards with natural/ and labelled/)"; fi
  die "no data at $DATA: build it here with 'bash benchmarks/gpu_study.sh --build-data' and carry it (carry=[\"$DATA\"])"
}
read -r -a ARM_LIST <<< "$ARMS"
((${#ARM_LIST[@]})) || die "no arms (ARMS or --arms)"
for arm in "${ARM_LIST[@]}"; do arm_overrides "$arm" > /dev/null || exit 2; done  # fail before training
RESULTS="${RESULTS:-${OUT:-$RUNS}}"
mkdir -p "$RUNS" "$RESULTS"
exec > >(tee -a "$RESULTS/gpu_study.log") 2> >(tee -a "$RESULTS/gpu_study.log" >&2)

SIZE=()  # --steps / --batch
if [[ -n "$STEPS" ]]; then
  SIZE+=("train.max_steps=$STEPS" "checkpoint.every_steps=$STEPS" "train.warmup_steps=$((STEPS / 10))")
fi
if [[ -n "$BATCH" ]]; then SIZE+=("train.batch_size=$BATCH"); fi
LAST=()  # after the arm's flags
PROBE=(eval.equivariance.transforms=rotation,se2 eval.equivariance.features=global)
CLS=()
if ((TINY)); then
  LAST+=(data.global_size=32 data.local_size=16 data.num_workers=0 model.arch=vit_tiny
    model.patch_size=4 model.embed_dim=32 model.depth=2 model.num_heads=2 method.expander_dim=64
    split.d_patch=32 recon.d_equi=16 recon.decoder_channels=16 train.precision=fp32
    train.max_steps=4 train.warmup_steps=1 train.batch_size=8 checkpoint.every_steps=4)
  PROBE+=(eval.equivariance.train_images=32 eval.equivariance.test_images=16
    eval.equivariance.views_per_image=2 eval.equivariance.epochs=1 eval.batch_size=64)
  CLS+=(eval.labelled_train_images=64 eval.labelled_test_images=32 eval.linear.epochs=1
    eval.batch_size=64)
fi

# The plan: one line per step, tab-separated: KIND ARM SKIP_IF_EXISTS ARGV... (the equirecon CLI).
PLAN="$RUNS/plan.tsv"
: > "$PLAN"
step() { local IFS=$'\t'; echo "$*" >> "$PLAN"; }
probes() {  # probes ARM RUN TAG VIEWS [--floor F]
  local arm="$1" run="$2" tag="$3" views="$4" view
  shift 4
  for view in $views; do
    step probe "$arm" "$run/evals/${tag}_$view.json" eval --checkpoint "$run/checkpoints/latest" \
      --config "$CFG" --tasks equivariance "${PROBE[@]}" "eval.equivariance.view=$view" \
      --out "$run/evals/${tag}_$view.json" --no-mlflow "$@"
  done
  step probe "$arm" "$run/evals/${tag}_cls.json" eval --checkpoint "$run/checkpoints/latest" \
    --config "$CFG" --tasks knn,linear "${CLS[@]}" --out "$run/evals/${tag}_cls.json" --no-mlflow "$@"
}
FLOOR_VIEWS="full context"
for arm in "${ARM_LIST[@]}"; do
  if [[ "$arm" == *-disk* ]]; then FLOOR_VIEWS="full context disk"; fi
done
first="$RUNS/${ARM_LIST[0]}_s$SEED"
for arm in "${ARM_LIST[@]}"; do
  run="$RUNS/${arm}_s$SEED"
  mapfile -t flags < <(arm_overrides "$arm")
  step train "$arm" "$run/done" pretrain --config "$CFG" "run.dir=$run" "train.seed=$SEED" \
    "data.path=$DATA" tracking.enabled=false "${SIZE[@]}" "${flags[@]}" "${LAST[@]}" \
    "${OVERRIDES[@]}"
  probes "$arm" "$run" model "$(views_of "$arm")"
  if [[ "$run" == "$first" ]]; then
    for floor in random pixels; do probes floors "$first" "floor_$floor" "$FLOOR_VIEWS" --floor "$floor"; done
  fi
done

if ((TINY)); then BUDGET_S="${BUDGET_S:-0}"; else BUDGET_S="${BUDGET_S:-560}"; fi
export GPU_STUDY_TINY="$TINY" GPU_STUDY_RUNS="$RUNS" GPU_STUDY_RESULTS="$RESULTS" \
  GPU_STUDY_BUDGET_S="$BUDGET_S" PYTHONUNBUFFERED=1
exec "$PY" - "$PLAN" <<'PY'
"""Runs the plan in one process (torch and CUDA start once), then the table and results.json."""

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

t0 = time.perf_counter()
import torch  # noqa: E402

tiny = os.environ["GPU_STUDY_TINY"] == "1"
runs, results = Path(os.environ["GPU_STUDY_RUNS"]), Path(os.environ["GPU_STUDY_RESULTS"])
budget = float(os.environ["GPU_STUDY_BUDGET_S"])
if not tiny and not torch.cuda.is_available():
    print(
        "gpu_study.sh: no CUDA device (torch.cuda.is_available() is False): run it on the GPU "
        "machine, or with --tiny on the CPU",
        file=sys.stderr,
    )
    sys.exit(2)
if torch.cuda.is_available():
    device = torch.cuda.get_device_name(0)
else:
    device = (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
print(f"== device: {device}; torch {torch.__version__}", flush=True)

from equirecon.cli import main as cli  # noqa: E402

plan = [line.rstrip("\n").split("\t") for line in Path(sys.argv[1]).read_text().splitlines()]


def check_sizes(argv: list[str]) -> None:
    """The torch reader gives each worker an equal share of the natural train images and makes
    whole batches of it: batch x workers must not exceed them (else an epoch has no batch)."""
    from equirecon.config import load_config

    cfg = load_config(argv[argv.index("--config") + 1], [a for a in argv if "=" in a])
    manifest = json.loads((Path(cfg.data.path) / "manifest.json").read_text())
    images = manifest.get("counts", {}).get("natural", {}).get("train", 0)
    workers = max(1, cfg.data.num_workers)
    if cfg.train.batch_size * workers > images:
        print(
            f"gpu_study.sh: train.batch_size {cfg.train.batch_size} x data.num_workers {workers} "
            f"> {images} natural train images in {cfg.data.path}: lower --batch or "
            "data.num_workers",
            file=sys.stderr,
        )
        sys.exit(2)


for _kind, _arm, _done, *_argv in plan:
    if _kind == "train":
        check_sizes(_argv)
arms: dict = {}
failed: list[str] = []
skipped: list[str] = []
for kind, arm, done, *argv in plan:
    run = Path(done).parent if kind == "train" else Path(done).parent.parent  # RUN/evals/x.json
    info = arms.setdefault(arm, {"train_s": 0.0, "probe_s": 0.0, "steps": [], "run": str(run)})
    if arm in skipped or (kind == "probe" and arm in failed):
        continue
    if kind == "train":
        info["overrides"] = [a for a in argv if "=" in a]
        spent = [a["train_s"] + a["probe_s"] for a in arms.values() if a["train_s"]]
        elapsed = time.perf_counter() - t0
        if budget and spent and not Path(done).exists() and elapsed + max(spent) > budget:
            print(
                f"== {arm}: skipped: {elapsed:.0f} s spent, an arm took up to {max(spent):.0f} s, "
                f"budget {budget:.0f} s (BUDGET_S)",
                flush=True,
            )
            skipped.append(arm)
            continue
    if Path(done).exists():
        print(f"== {arm}: {kind} done before ({done})", flush=True)
        continue
    print(f"== {arm}: {kind}: equirecon {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        rc = cli(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code if isinstance(e.code, int) else 1
    seconds = time.perf_counter() - start
    info[f"{kind}_s"] += seconds
    info["steps"].append({"kind": kind, "out": done, "seconds": round(seconds, 1), "rc": rc})
    print(f"== {arm}: {kind} rc {rc}, {seconds:.1f} s", flush=True)
    if rc:
        failed.append(arm)
    elif kind == "train":
        Path(done).touch()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_stats(run: Path) -> dict:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/loss_total" in r]
    if not rows:
        return {}
    out = {"last_step": rows[-1]["step"], "final_loss_total": rows[-1]["train/loss_total"]}
    for key in ("train/loss_recon", "train/loss_ssl"):
        if key in rows[-1]:
            out["final_" + key.split("/")[1]] = rows[-1][key]
    for key in ("train/img_per_s", "train/data_wait_frac", "train/mfu", "train/max_mem_gb"):
        values = [r[key] for r in rows[len(rows) // 5 :] if key in r]  # past the first fifth
        if values:
            out["median_" + key.split("/")[1]] = statistics.median(values)
    return out


table = subprocess.run(
    [sys.executable, "benchmarks/study_table.py", str(runs), "--out", str(results / "table.md")],
    capture_output=True,
    text=True,
)
print(table.stdout, end="")
if table.returncode:
    print(table.stderr, file=sys.stderr)
    failed.append("table")

summary = {
    "device": device,
    "torch": torch.__version__,
    "tiny": tiny,
    "arms": {},
    "failed": failed,
    "skipped": skipped,
    "wall_s": round(time.perf_counter() - t0, 1),
}
lines = [
    f"## GPU study timings: {device}",
    "",
    "| arm | status | train s | probes s | arm s | img/s (median) | data wait | final loss |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
]
for arm, info in arms.items():
    run = Path(info["run"])
    floors = arm == "floors"  # the floor probes live in the first arm's run
    evals = {
        f.stem: json.loads(f.read_text())
        for f in sorted((run / "evals").glob("*.json"))
        if f.stem.startswith("floor_") == floors
    }
    stats = {} if floors else train_stats(run)
    summary["arms"][arm] = {
        "run": str(run),
        "overrides": info.get("overrides", []),
        "train_s": round(info["train_s"], 1),
        "probe_s": round(info["probe_s"], 1),
        "status": "skipped" if arm in skipped else "failed" if arm in failed else "ok",
        "steps": info["steps"],
        "train": stats,
        "evals": evals,
    }
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines.append(
        f"| {arm} | {summary['arms'][arm]['status']} | {info['train_s']:.0f} | {info['probe_s']:.0f} | "
        f"{info['train_s'] + info['probe_s']:.0f} | {fmt(stats.get('median_img_per_s'), 0)} | "
        f"{fmt(stats.get('median_data_wait_frac'), 2)} | {fmt(stats.get('final_loss_total'), 3)} |"
    )
lines.append(f"\ntotal wall time {summary['wall_s']:.0f} s (torch start included)")
timing = "\n".join(lines) + "\n"
print("\n" + timing, end="")
summary["table_md"] = table.stdout
summary["timings_md"] = timing
(results / "results.json").write_text(json.dumps(summary, indent=1))
print(
    f"== results: {results / 'results.json'}, {results / 'table.md'}, {results / 'gpu_study.log'}"
)
if skipped:
    print(
        f"== skipped for time: {' '.join(skipped)}: rerun the same command on this machine "
        "(finished steps are kept), or on a fresh one with --arms"
    )
if failed:
    print(f"== failed: {' '.join(failed)} (see {results / 'gpu_study.log'})", file=sys.stderr)
    sys.exit(1)
sys.exit(3 if skipped else 0)
PY
