"""Linear segmentation (`eval.segmentation.*`): `eval/segmentation/miou` (evals/segmentation.py)."""

from __future__ import annotations

from evals.providers import FeatureProvider
from evals.tasks.base import EvalContext, TaskResult, register_task


@register_task("segmentation")
def run(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.segmentation import load_segmentation, segmentation_classes, segmentation_miou

    s, size = ctx.cfg.segmentation, ctx.img_size
    train_x, train_y = load_segmentation(ctx.data, "train", size, s.train_images or None)
    test_x, test_y = load_segmentation(ctx.data, "val", size, s.test_images or None)
    classes = segmentation_classes(ctx.data)
    res = segmentation_miou(
        provider,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=len(classes) if classes else None,
        epochs=s.epochs,
        lr=s.lr,
        seed=ctx.cfg.seed,
        device=ctx.device,
    )
    if classes:
        res["classes"] = classes
    return {"eval/segmentation/miou": float(res["miou"])}, res
