"""Mechanism check (b): the gradient λ·L_recon sends into the backbone, relative to L_SSL's.

For each checkpoint of a run with recon on, the student is restored and, on the same training
batches (the run's own loader, seed and θ draws), the backbone gradients of L_SSL and of
λ·L_recon are computed separately. Printed per checkpoint: both norms, their ratio and their
cosine (negative: the two losses pull the backbone apart). With --grids DIR, the reconstruction
grid of the first batch at each checkpoint is saved there (u, v2 = g_θ(u), then u_k and û_k per
k), so early and late reconstructions can be compared.

    python benchmarks/grad_ratio.py RUN_DIR [--batches 4] [--out FILE] [--grids DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grids", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from equirecon.config import load_config
    from pretrain.checkpoint import Checkpointer
    from pretrain.distributed import DistInfo
    from pretrain.methods import build_method
    from pretrain.train import build_loader, transform_generator
    from pretrain.train_logging import save_recon_grid

    cfg = load_config(args.run_dir / "config.yaml")
    if not cfg.recon.enabled:
        raise SystemExit(f"{args.run_dir}: recon.enabled is false, there is no L_recon")
    ckpts = sorted((args.run_dir / "checkpoints").glob("step_*"))
    if not ckpts:
        raise SystemExit(f"no checkpoints under {args.run_dir / 'checkpoints'}")
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    method.batch_slice = (0, 1)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loader = build_loader(cfg, dist, method.backbone.patch_size)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == args.batches:
            break
    params = [p for p in method.backbone.parameters() if p.requires_grad]
    rows = []
    for ckpt in ckpts:
        state = {"student": method.student.state_dict()}
        Checkpointer(args.run_dir).load(ckpt, state, partial=True)
        method.student.load_state_dict(state["student"])
        method.train()
        ratios, cosines, n_ssl, n_rec = [], [], [], []
        for i, batch in enumerate(batches):
            torch.manual_seed(i)
            out = method.compute_losses(
                method.student, batch, cfg.method.teacher_temp, transform_generator(0, i)
            )
            g_ssl = torch.autograd.grad(out.loss_ssl, params, retain_graph=True, allow_unused=True)
            g_rec = torch.autograd.grad(cfg.recon.lam * out.loss_recon, params, allow_unused=True)
            a = torch.cat([g.flatten() for g in g_ssl if g is not None])
            b = torch.cat([g.flatten() for g in g_rec if g is not None])
            if i == 0 and args.grids is not None:
                args.grids.mkdir(parents=True, exist_ok=True)
                save_recon_grid(out, args.grids / f"{args.run_dir.name}_{ckpt.name}.png")
            n_ssl.append(float(a.norm()))
            n_rec.append(float(b.norm()))
            if n_ssl[-1] > NO_GRADIENT:  # with every SSL weight 0 there is nothing to compare
                ratios.append(n_rec[-1] / n_ssl[-1])
                cosines.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
        row = {
            "checkpoint": ckpt.name,
            "grad_ssl": statistics.fmean(n_ssl),
            "grad_recon": statistics.fmean(n_rec),
            "ratio": statistics.fmean(ratios) if ratios else None,
            "cosine": statistics.fmean(cosines) if cosines else None,
        }
        rows.append(row)
        print(
            f"{ckpt.name}  |∇L_SSL| {row['grad_ssl']:.4f}  |∇λL_recon| {row['grad_recon']:.4f}  "
            f"ratio {_fmt(row['ratio'], '.3f')}  cosine {_fmt(row['cosine'], '+.3f')}",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run_dir), "rows": rows}, indent=1))
    return 0


NO_GRADIENT = 1e-8  # a backbone gradient norm below this is "no SSL loss" (weights 0)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
