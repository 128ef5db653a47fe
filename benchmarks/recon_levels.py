"""Where L_recon should sit: reference levels and what the light decoder can do on raw pixels.

Mechanism check (a) of the method-effect study. The reconstruction loss of a run means little
alone: is 0.25 "blurry colour" or "rotated content"? This script measures, on the training
data of a config (its real loader, its g_θ, its K targets u_k = g_{kθ/(K+1)}(u)), the L_recon of

- fixed predictors: zero (the dataset mean), each target's own mean colour (an oracle for
  "predict each image's mean colour"), a copy of v2 = g_θ(u) (the content, not un-transformed),
  the exact inverse g_{-(K+1-k)θ/(K+1)}(v2) (content and θ known; the fill stays lost), and the
  same low-passed to the decoder's patch grid (what a grid-resolution prediction can reach);
- the decoder of the config (`pretrain.models.decoder.ReconDecoder`: per-patch linear, four
  3x3 convolutions) trained on raw pixel patches instead of encoder features: [v1; v2] (all the
  information the encoder has), [v1; v2] + θ broadcast to every patch (θ given), and u_k's own
  patches (an autoencoder: the decoder's resolution floor);
- with `--encoder random|CHECKPOINT` (repeatable), the same decoder trained on a *frozen*
  encoder's patch tokens of [v1; v2] (a random-init ViT of the config's shape, or a checkpoint's
  teacher backbone) and, for a +recon checkpoint, on its split head's z_equi slice: does the
  encoder's output still hold what the decoder got from raw pixels, or was it lost?

    python benchmarks/recon_levels.py --config configs/study/vicreg_recon.yaml --steps 600

With `recon.fill=disk` among the overrides, views and targets are masked as in that training.

`--theta-probe` adds the reference level of the positive control (`recon.theta_head_weight`):
the study's equivariance probe h (evals/equivariance.py, 8 θ draws per image, 30 epochs) fitted
on the raw pixels [u; g_θ(u)] of the *training* views u (the pool's, tested on the held-out
batches), in the `disk` view under `recon.fill=disk`, else `full`: how much θ the views the
control trains on carry for a model that sees their pixels.

A table is printed and, with --out, written as JSON. The gaps tell where the chain can break:
copy-v2 minus inverse is what knowing θ is worth to the loss; decoder(pixels) vs decoder
(pixels + θ) is whether this decoder can infer θ and move content across patches by itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per trained decoder")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pool", type=int, default=48, help="training batches held in memory")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--decoders",
        default="",
        help="train only the decoders whose name contains one of these comma-separated texts",
    )
    parser.add_argument(
        "--encoder",
        action="append",
        default=[],
        help="also train the decoder on this frozen encoder's tokens: 'random' or a checkpoint",
    )
    parser.add_argument(
        "--theta-probe", action="store_true", help="also: the probe's R² of θ on the views' pixels"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_intermixed_args(argv)

    import torch
    import torch.nn.functional as F

    from data_pipeline.multicrop import multicrop_kwargs
    from data_pipeline.torch_reader.loader import build_train_loader
    from data_pipeline.transforms import build_transform
    from data_pipeline.transforms.fill import hide_fill
    from equirecon.config import load_config
    from pretrain.losses.recon import recon_loss
    from pretrain.models.decoder import ReconDecoder

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(args.seed)
    size, patch, k = cfg.data.global_size, cfg.model.patch_size, cfg.recon.k
    grid = size // patch
    transform = build_transform(cfg.recon.transform, size)
    loader = build_train_loader(
        cfg.data.path,
        num_workers=cfg.data.num_workers,
        augmentations=cfg.data.augmentations,
        **multicrop_kwargs(cfg, 0, 1, patch),
    )
    pairs = []  # (v1, u) global crops
    for batch in loader:
        pairs.append((batch.global_crops[0].clone(), batch.global_crops[1].clone()))
        if len(pairs) == args.pool + args.eval_batches:
            break
    train_pairs, eval_pairs = pairs[: args.pool], pairs[args.pool :]
    gen = torch.Generator().manual_seed(args.seed)

    def sample(v1: torch.Tensor, u: torch.Tensor, g: torch.Generator):
        theta = transform.sample(u.shape[0], generator=g)
        v2 = transform.apply(u, theta)
        targets = transform.intermediates(u, theta, k)
        if cfg.recon.fill == "disk":  # as the training's views (pretrain/methods/recon.py)
            v1, v2, *targets = hide_fill(transform, [v1, v2, *targets])
        return v1, v2, theta, targets

    def lowpass(x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, size=(grid, grid), mode="area")
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def inverse(v2: torch.Tensor, theta: torch.Tensor, j: int) -> torch.Tensor:
        """g_{-(K+1-j)θ/(K+1)}(v2) = u_j wherever v2 kept the content."""
        return transform.apply(v2, -theta * (k + 1 - j) / (k + 1))

    fixed = {
        "zero (dataset mean)": lambda v1, v2, th, t: [torch.zeros_like(x) for x in t],
        "mean colour of u_k (oracle)": lambda v1, v2, th, t: [
            x.mean(dim=(2, 3), keepdim=True).expand_as(x) for x in t
        ],
        "copy v2": lambda v1, v2, th, t: [v2 for _ in t],
        "copy v2, low-passed to the grid": lambda v1, v2, th, t: [lowpass(v2) for _ in t],
        "inverse of v2 (θ known)": lambda v1, v2, th, t: [
            inverse(v2, th, j + 1) for j in range(len(t))
        ],
        "inverse of v2, low-passed": lambda v1, v2, th, t: [
            lowpass(inverse(v2, th, j + 1)) for j in range(len(t))
        ],
        "u_k low-passed (grid resolution floor)": lambda v1, v2, th, t: [lowpass(x) for x in t],
    }
    rows = []
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    eval_sets = [sample(v1, u, eval_gen) for v1, u in eval_pairs]
    for name, predict in fixed.items():
        loss = sum(float(recon_loss(predict(*s), s[3])) for s in eval_sets) / len(eval_sets)
        rows.append({"predictor": name, "kind": "fixed", "l_recon": loss})
        print(f"{name:<44} {loss:8.4f}", flush=True)

    def pixels(x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, N, 3p²)
        return F.pixel_unshuffle(x, patch).flatten(2).transpose(1, 2)

    def theta_tokens(theta: torch.Tensor, n: int) -> torch.Tensor:
        return transform.normalize_params(theta)[:, None, :].expand(-1, n, -1)

    inputs = {
        "decoder on pixels [v1; v2]": lambda v1, v2, th, t, j: torch.cat(
            [pixels(v1), pixels(v2)], -1
        ),
        "decoder on pixels [v1; v2] + θ": lambda v1, v2, th, t, j: torch.cat(
            [pixels(v1), pixels(v2), theta_tokens(th, grid * grid)], -1
        ),
        "decoder on pixels of u_k (autoencoder)": lambda v1, v2, th, t, j: pixels(t[j]),
    }
    if args.theta_probe:
        rows.append(_theta_probe(cfg, transform, train_pairs, eval_pairs, args.seed))
    for spec in args.encoder:
        inputs.update(_encoder_inputs(spec, cfg, patch))
    for name, make_input in inputs.items():
        if not any(text in name for text in args.decoders.split(",")):
            continue
        t0 = time.perf_counter()
        probe = sample(*train_pairs[0], gen)
        in_dim = make_input(*probe, 0).shape[-1]
        decoders = torch.nn.ModuleList(
            ReconDecoder(
                in_dim, (size, size), (grid, grid), cfg.recon.decoder_channels,
                cfg.recon.decoder_resize, cfg.recon.decoder_kernel,
            )
            for _ in range(k)
        )  # fmt: skip
        opt = torch.optim.AdamW(decoders.parameters(), lr=args.lr, weight_decay=0.0)
        curve = []
        for step in range(args.steps):
            s = sample(*train_pairs[step % len(train_pairs)], gen)
            loss = recon_loss([d(make_input(*s, j)) for j, d in enumerate(decoders)], s[3])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(float(loss.detach()))
        with torch.no_grad():
            final = sum(
                float(recon_loss([d(make_input(*s, j)) for j, d in enumerate(decoders)], s[3]))
                for s in eval_sets
            ) / len(eval_sets)
        rows.append(
            {
                "predictor": name,
                "kind": "trained",
                "l_recon": final,
                "train_curve_every_50": curve[::50],
                "steps": args.steps,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"{name:<44} {final:8.4f}   ({args.steps} steps, {rows[-1]['seconds']} s)", flush=True
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"config": args.config, "overrides": args.overrides, "rows": rows}, indent=1)
        )
    return 0


def _theta_probe(cfg, transform, train_pairs: list, eval_pairs: list, seed: int) -> dict:
    """The equivariance probe's rotation R² on raw pixels of the training views u."""
    import torch

    from evals.equivariance import equivariance_r2
    from evals.providers import PixelFeatures

    view = "disk" if cfg.recon.fill == "disk" else "full"
    train = torch.cat([u for _, u in train_pairs])
    test = torch.cat([u for _, u in eval_pairs])
    pixels = PixelFeatures(cfg.model.patch_size)
    t0 = time.perf_counter()
    result = equivariance_r2(
        pixels.global_features, train, test, transform, seed=seed, views_per_image=8, epochs=30,
        view=view,
    )  # fmt: skip
    name = f"θ probe on pixels [u; g_θ u], training views, {view} view (R²)"
    print(f"{name:<44} {result['r2']:8.4f}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"predictor": name, "kind": "theta_probe", "r2": float(result["r2"]), "view": view,
            "train_images": int(train.shape[0]), "test_images": int(test.shape[0])}  # fmt: skip


def _encoder_inputs(spec: str, cfg, patch: int) -> dict:
    """Decoder inputs from a frozen encoder: its patch tokens of [v1; v2] (and z_equi of a +recon
    checkpoint's split head), computed without gradients."""
    import torch

    from pretrain.models.backbone import backbone_kwargs, build_backbone
    from pretrain.restore import load_teacher_encoder, resolve_checkpoint

    if spec == "random":
        torch.manual_seed(0)
        kwargs = {**backbone_kwargs(cfg.model, cfg.data.global_size), "drop_path": 0}
        backbone, head, label = build_backbone(**kwargs), None, "random-init ViT"
    else:
        path = resolve_checkpoint(spec)
        backbone, head, _ = load_teacher_encoder(path)
        label = f"{path.parent.parent.name}/{path.name}"
    backbone.eval()
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))

    def tokens(x: torch.Tensor, equi: bool) -> torch.Tensor:
        with torch.no_grad():
            t = backbone(x)
            if equi:
                t = head.equi(t)
            return t[:, prefix:]

    out = {
        f"decoder on frozen {label} tokens [v1; v2]": lambda v1, v2, th, t, j: torch.cat(
            [tokens(v1, False), tokens(v2, False)], -1
        )
    }
    if head is not None:
        out[f"decoder on frozen {label} z_equi [v1; v2]"] = lambda v1, v2, th, t, j: torch.cat(
            [tokens(v1, True), tokens(v2, True)], -1
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
