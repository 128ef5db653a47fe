"""The linear depth task's settings, `eval.depth.*` (torch: evals/tasks/depth.py).

A 1x1 convolution on the patch features regresses log depth (depth subset: the demo's rendered
rooms or NYU Depth v2).
"""

from dataclasses import dataclass

from equirecon.checks import NON_NEGATIVE, POSITIVE, gt
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec


@dataclass
class DepthSettings:
    train_images: int = 300  # 0: every image
    test_images: int = 100  # 0: every image
    epochs: int = 20
    lr: float = 0.01


SPEC = register_task_spec(
    EvalTaskSpec(
        name="depth",
        settings=DepthSettings,
        checks={
            "train_images": NON_NEGATIVE,
            "test_images": NON_NEGATIVE,
            "epochs": POSITIVE,
            "lr": gt(0),
        },
        order=60,
        data=("depth",),
        summary="linear depth from patch features: eval/depth/rmse, abs_rel, delta1",
    )
)
