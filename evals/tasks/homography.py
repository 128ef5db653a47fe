"""Homography estimation (`eval.homography.*`): `eval/homography/mce` (evals/homography.py)."""

from __future__ import annotations

import math

from evals.providers import FeatureProvider
from evals.tasks.base import EvalContext, TaskResult, register_task


@register_task("homography")
def run(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.homography import homography_mce

    s, size = ctx.cfg.homography, ctx.img_size
    rho = s.rho * size
    source = size + 2 * math.ceil(rho)
    train_x, _ = ctx.images("natural", "train", source, s.train_images)
    test_x, _ = ctx.images("natural", "val", source, s.test_images)
    res = homography_mce(
        provider,
        train_x,
        test_x,
        patch_px=size,
        rho=rho,
        train_views=s.views,
        epochs=s.epochs,
        channels=s.channels,
        lr=s.lr,
        seed=ctx.cfg.seed,
        device=ctx.device,
    )
    return {"eval/homography/mce": float(res["mce"])}, res
