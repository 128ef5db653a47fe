"""Equivariance R² (`eval.equivariance.*`): `eval/equivariance/<transform>_r2` (evals/equivariance.py).

The images are those of the subset `eval.equivariance.subset` (default `natural`). The
dispatcher adds each R² under its probe-qualified name too,
`eval/equivariance/<view>/<features>[/<subset>]/<transform>_r2`
(`equirecon.eval_tasks.equivariance`).
"""

from __future__ import annotations

from equirecon.checks import split_names
from evals.providers import FeatureProvider
from evals.tasks.base import EvalContext, TaskResult, register_task


@register_task("equivariance")
def run(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from data_pipeline.transforms import build_transform
    from evals.equivariance import ProbeView, equivariance_r2

    e, s, size = ctx.cfg, ctx.cfg.equivariance, ctx.img_size
    metrics, details = {}, {}
    for name in split_names(s.transforms):
        transform = build_transform(name, size)
        source = ProbeView(transform, s.view, size).source_size
        train_x, _ = ctx.images(s.subset, "train", source, s.train_images)
        test_x, _ = ctx.images(s.subset, "val", source, s.test_images)
        res = equivariance_r2(
            provider.equivariance_fn(s.features, s.grid),
            train_x,
            test_x,
            transform,
            seed=e.seed,
            epochs=s.epochs,
            hidden=s.hidden,
            batch_size=e.batch_size,
            views_per_image=s.views_per_image,
            device=ctx.device,
            progress=ctx.progress,
            view=s.view,
            repeats=s.repeats,
        )
        metrics[f"eval/equivariance/{name}_r2"] = float(res["r2"])
        if s.repeats > 1:
            metrics[f"eval/equivariance/{name}_r2_std"] = float(res["r2_std"])
        details[name] = {
            **res,
            "features": s.features,
            "grid": s.grid if s.features == "grid" else None,
            "subset": s.subset,
        }
    return metrics, details
