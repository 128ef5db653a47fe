"""Linear probe (`eval.linear.*`): `eval/linear/top1` (evals/linear.py)."""

from __future__ import annotations

from equirecon.checks import split_names
from evals.providers import FeatureProvider
from evals.tasks.base import EvalContext, TaskResult, register_task


@register_task("linear")
def run(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.linear import linear_probe

    s = ctx.cfg.linear
    f_train, y_train, f_test, y_test = ctx.labelled_features(provider)
    res = linear_probe(
        f_train,
        y_train,
        f_test,
        y_test,
        lrs=tuple(float(v) for v in split_names(s.lrs)),
        epochs=s.epochs,
        val_fraction=s.val_fraction,
        seed=ctx.cfg.seed,
        device=ctx.device,
    )
    return {"eval/linear/top1": float(res["top1"])}, res
