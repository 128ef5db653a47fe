"""The linear probe's settings, `eval.linear.*` (torch: evals/tasks/linear.py).

A linear classifier on the labelled subset's global features (the images of kNN), one per
learning rate, the best on a held-out fraction of the train split reported on the test split.
"""

from dataclasses import dataclass

from equirecon.checks import POSITIVE, positive_floats, within
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec


@dataclass
class LinearSettings:
    lrs: str = "0.001,0.01,0.1,1.0"  # the learning-rate sweep
    epochs: int = 50
    val_fraction: float = 0.1  # of the train split, to pick the learning rate


SPEC = register_task_spec(
    EvalTaskSpec(
        name="linear",
        settings=LinearSettings,
        checks={
            "lrs": positive_floats("learning rates"),
            "epochs": POSITIVE,
            "val_fraction": within(0, 1, low_open=True, high_open=True),
        },
        order=30,
        data=("labelled",),
        summary="linear probe top-1 on the labelled subset: eval/linear/top1",
    )
)
