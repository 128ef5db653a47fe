"""Backbone forward + backward with batch-subset stochastic depth vs timm's 0/1 mask.

Run: ``python benchmarks/drop_path_micro.py --arch vit_small_patch16 --batch 8 --drop-path 0.3``
(same weights, same input, the two modes alternated; prints the median paired ratio of process
CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pretrain.models.backbone import build_backbone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_small_patch16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--drop-path", type=float, default=0.3)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        mode: build_backbone(
            args.arch, img_size=args.size, drop_path=args.drop_path, drop_path_mode=mode
        ).train()
        for mode in ("subset", "mask")
    }
    models["mask"].load_state_dict(models["subset"].state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)

    def run(mode: str) -> float:
        """Process CPU seconds of one forward + backward (robust to other jobs on the cores)."""
        t0 = time.process_time()
        models[mode](x).square().mean().backward()
        return time.process_time() - t0

    times: dict[str, list[float]] = {"subset": [], "mask": []}
    for mode in times:
        run(mode)  # warm-up
    for r in range(args.pairs):
        for mode in ("subset", "mask") if r % 2 == 0 else ("mask", "subset"):
            times[mode].append(run(mode))
    ratio = statistics.median(a / b for a, b in zip(times["subset"], times["mask"]))
    print(
        f"{args.arch} batch {args.batch} {args.size}px drop_path {args.drop_path}: CPU time subset "
        f"{1e3 * statistics.median(times['subset']):.0f} ms, mask "
        f"{1e3 * statistics.median(times['mask']):.0f} ms, subset/mask {ratio:.3f} "
        f"({args.pairs} pairs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
