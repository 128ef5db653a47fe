"""How much the equivariance R² moves with the probe's own seed (θ draws, h init, batch order).

For each provider (the floors "pixels" and "random" of a config's backbone shape, and any
checkpoints), each transform and each probe setting, the probe is fitted with seeds 0..S-1 on
the same images; the table gives mean ± std (sample std) and the spread (max − min). A study can
only read differences well above this std.

    python benchmarks/probe_stability.py --config configs/study/base.yaml --seeds 0,1,2 \\
        --transforms rotation,se2 --settings 768x8x30,1536x8x30 [--checkpoint RUN/checkpoints/latest]

A setting is TRAIN_IMAGESxVIEWSxEPOCHS; the test set is `--test-images` images, one view each;
`--repeats R` averages R fits of h per probe seed (as `eval.equivariance.repeats`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config whose model/data define floors")
    parser.add_argument("--checkpoint", action="append", default=[], help="also probe these")
    parser.add_argument("--floors", default="pixels,random")
    parser.add_argument("--transforms", default="rotation,se2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="768x8x30")
    parser.add_argument("--test-images", type=int, default=512)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fits of h per probe seed, averaged (eval.equivariance.repeats)",
    )
    parser.add_argument("--features", default=None, help="eval.equivariance.features override")
    parser.add_argument("--view", default=None, help="eval.equivariance.view override")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    import torch

    from data_pipeline.eval_images import load_images
    from data_pipeline.transforms import build_transform
    from equirecon.config import load_config
    from evals.equivariance import ProbeView, equivariance_r2
    from evals.providers import build_provider
    from pretrain.models.backbone import backbone_kwargs, build_backbone
    from pretrain.restore import load_teacher_encoder, resolve_checkpoint

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_config(args.config)
    e = cfg.eval
    features = args.features or e.equivariance.features
    view = args.view or e.equivariance.view
    size = e.img_size or cfg.data.global_size
    data = args.data or e.data or cfg.data.path
    shape = build_backbone(**{**backbone_kwargs(cfg.model, cfg.data.global_size), "drop_path": 0})
    providers = [(f"floor:{f}", build_provider(shape, f, seed=0)) for f in _split(args.floors)]
    for ckpt in args.checkpoint:
        path = resolve_checkpoint(ckpt)
        backbone, head, _ = load_teacher_encoder(path)
        providers.append((str(path), build_provider(backbone, None, split_head=head)))

    rows = []
    cache: dict[tuple[str, int, int], torch.Tensor] = {}
    for setting in _split(args.settings):
        n_train, views, epochs = (int(v) for v in setting.split("x"))
        for name in _split(args.transforms):
            transform = build_transform(name, size)
            source = ProbeView(transform, view, size).source_size
            for split, n in (("train", n_train), ("val", args.test_images)):
                if (split, source, n) not in cache:
                    cache[(split, source, n)] = load_images(
                        data, "natural", split, source, with_labels=False, max_images=n
                    )[0]
            train_x = cache[("train", source, n_train)]
            test_x = cache[("val", source, args.test_images)]
            for label, provider in providers:
                fn = provider.equivariance_fn(features, e.equivariance.grid)
                values, t0 = [], time.perf_counter()
                for seed in (int(s) * REPEAT_STRIDE for s in _split(args.seeds)):
                    res = equivariance_r2(
                        fn, train_x, test_x, transform, seed=seed, epochs=epochs,
                        hidden=e.equivariance.hidden, batch_size=e.batch_size, views_per_image=views,
                        view=view, repeats=args.repeats,
                    )  # fmt: skip
                    values.append(res["r2"])
                row = {
                    "provider": label,
                    "transform": name,
                    "setting": setting,
                    "repeats": args.repeats,
                    "features": features,
                    "view": view,
                    "r2": values,
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "spread": max(values) - min(values),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                rows.append(row)
                print(
                    f"{setting:>12} {name:<12} {label[-40:]:<40} {row['mean']:7.3f} ± "
                    f"{row['std']:.3f}  spread {row['spread']:.3f}  "
                    f"[{', '.join(f'{v:.3f}' for v in values)}]  {row['seconds']}s",
                    flush=True,
                )
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


# Probe seed s fits h with seeds s·REPEAT_STRIDE + r (r < repeats): no fit is shared between seeds.
REPEAT_STRIDE = 1000


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
