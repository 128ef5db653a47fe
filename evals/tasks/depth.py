"""Linear depth (`eval.depth.*`): `eval/depth/{rmse,abs_rel,delta1}` (evals/depth.py)."""

from __future__ import annotations

from evals.providers import FeatureProvider
from evals.tasks.base import EvalContext, TaskResult, register_task


@register_task("depth")
def run(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.depth import depth_linear, depth_settings, load_depth

    s, size = ctx.cfg.depth, ctx.img_size
    train_x, train_y = load_depth(ctx.data, "train", size, s.train_images or None)
    test_x, test_y = load_depth(ctx.data, "val", size, s.test_images or None)
    settings = depth_settings(ctx.data)
    res = depth_linear(
        provider,
        train_x,
        train_y,
        test_x,
        test_y,
        epochs=s.epochs,
        lr=s.lr,
        min_depth_m=settings["min_depth_m"],
        max_depth_m=settings["max_depth_m"],
        seed=ctx.cfg.seed,
        device=ctx.device,
    )
    metrics = {f"eval/depth/{name}": float(res[name]) for name in ("rmse", "abs_rel", "delta1")}
    return metrics, {**res, **settings}
