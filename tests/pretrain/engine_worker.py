"""One rank of the engine tests (run under torchrun, or alone for one process).

Runs a list of jobs `STRATEGY:RUN_NAME[:STOP_AFTER]` in order, in this one process group: each
builds a Trainer for `{out}/{RUN_NAME}` (resuming whatever checkpoint is there) and trains to
`--steps`, or only up to STOP_AFTER. After each job rank 0 writes `{out}/{RUN_NAME}.json` with
the loss sequence of its `metrics.jsonl`. The data backend is `synthetic`, so every world size
sees the same global batches (`--global-batch` split over the ranks).

Usage: engine_worker.py --out DIR --job ddp:ddp --job fsdp2:half:5 … [key=value …]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch.distributed as dist

from equirecon.config import load_config
from pretrain.distributed import init_distributed
from pretrain.train import Trainer

REPO = Path(__file__).resolve().parents[2]


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss_total"] for row in rows if "train/loss_total" in row]


def run_job(job: str, args: argparse.Namespace, info) -> None:  # noqa: ANN001 - DistInfo
    strategy, name, *stop = job.split(":")
    overrides = [
        f"run.dir={args.out / name}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.global_batch // info.world_size}",
        f"checkpoint.every_steps={args.steps // 2}",
        *args.overrides,
    ]
    if strategy.startswith("deepspeed"):
        overrides += ["train.strategy=deepspeed", f"train.zero_stage={strategy[-1]}"]
    else:
        overrides.append(f"train.strategy={strategy}")
    cfg = load_config(REPO / "configs" / "demo_cpu.yaml", overrides)
    Trainer(cfg, info).fit(stop_after=int(stop[0]) if stop else None)
    if info.is_main:
        (args.out / f"{name}.json").write_text(json.dumps(losses(args.out / name)))
    if dist.is_initialized():
        dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--job", action="append", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    info = init_distributed()
    for job in args.job:
        run_job(job, args, info)


if __name__ == "__main__":
    main()
