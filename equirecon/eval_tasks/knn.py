"""The kNN task's settings, `eval.knn.*` (torch: evals/tasks/knn.py).

Weighted k-nearest-neighbour classification of the labelled subset's global features; the
images are `eval.labelled_train_images` / `eval.labelled_test_images` (shared with linear).
"""

from dataclasses import dataclass

from equirecon.checks import POSITIVE
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec


@dataclass
class KnnSettings:
    k: int = 20  # neighbours


SPEC = register_task_spec(
    EvalTaskSpec(
        name="knn",
        settings=KnnSettings,
        checks={"k": POSITIVE},
        order=20,
        data=("labelled",),
        summary="k-nearest-neighbour top-1 on the labelled subset: eval/knn/top1",
    )
)
