"""The linear segmentation task's settings, `eval.segmentation.*` (torch: evals/tasks/segmentation.py).

A linear layer on the patch features, upsampled to the label map (segmentation subset).
"""

from dataclasses import dataclass

from equirecon.checks import NON_NEGATIVE, POSITIVE, gt
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec


@dataclass
class SegmentationSettings:
    train_images: int = 1200  # 0: every scene
    test_images: int = 400  # 0: every scene
    epochs: int = 20
    lr: float = 0.01


SPEC = register_task_spec(
    EvalTaskSpec(
        name="segmentation",
        settings=SegmentationSettings,
        checks={
            "train_images": NON_NEGATIVE,
            "test_images": NON_NEGATIVE,
            "epochs": POSITIVE,
            "lr": gt(0),
        },
        order=50,
        data=("segmentation",),
        summary="linear segmentation mIoU from patch features: eval/segmentation/miou",
    )
)
