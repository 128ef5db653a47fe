"""The homography task's settings, `eval.homography.*` (torch: evals/tasks/homography.py).

A small CNN on the patch-feature grids of two views regresses the four corner offsets
(natural subset; val photos held out); rho: the largest corner offset / image side.
"""

from dataclasses import dataclass

from equirecon.checks import POSITIVE, gt, within
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec


@dataclass
class HomographySettings:
    train_images: int = 400
    test_images: int = 200
    views: int = 4  # homographies drawn per train image
    rho: float = 0.25
    epochs: int = 15
    channels: int = 32  # width of the regression CNN
    lr: float = 0.001


SPEC = register_task_spec(
    EvalTaskSpec(
        name="homography",
        settings=HomographySettings,
        checks={
            "train_images": POSITIVE,
            "test_images": POSITIVE,
            "views": POSITIVE,
            "rho": within(0, 0.5, low_open=True, high_open=True),
            "epochs": POSITIVE,
            "channels": POSITIVE,
            "lr": gt(0),
        },
        order=40,
        data=("natural",),
        summary="mean corner error of a homography regressed from patch features: "
        "eval/homography/mce",
    )
)
