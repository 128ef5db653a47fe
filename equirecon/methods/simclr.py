"""SimCLR's spec (torch implementation: pretrain/methods/simclr.py).

No recipe options of its own (NO_RECIPE); the projector's BatchNorm needs batch statistics.
"""

from equirecon.methods import MethodSpec, register_spec

SPEC = register_spec(
    MethodSpec(
        name="simclr",
        d_patch=512,
        d_equi=256,
        min_batch_size=2,
        teacher_free=True,
        summary="NT-Xent over the two global views' CLS tokens, no teacher",
    )
)
