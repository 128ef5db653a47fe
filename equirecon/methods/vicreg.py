"""VICReg's spec, SIE "shared encoder" setting (torch implementation: pretrain/methods/vicreg.py).

No recipe options of its own (NO_RECIPE); variance/covariance need batch statistics.
"""

from equirecon.methods import MethodSpec, register_spec

SPEC = register_spec(
    MethodSpec(
        name="vicreg",
        d_patch=512,
        d_equi=256,
        min_batch_size=2,
        teacher_free=True,
        summary="VICReg on the CLS token, one shared encoder for both views, no teacher",
    )
)
