"""kNN classification (`eval.knn.*`): `eval/knn/top1` (evals/knn.py)."""

from __future__ import annotations

from evals.providers import FeatureProvider
from evals.tasks.base import EvalContext, TaskResult, register_task


@register_task("knn")
def run(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.knn import knn_classify

    f_train, y_train, f_test, y_test = ctx.labelled_features(provider)
    res = knn_classify(f_train, y_train, f_test, y_test, k=ctx.cfg.knn.k)
    return {"eval/knn/top1": float(res["top1"])}, res
