"""DINOv2's spec (torch implementation: pretrain/methods/dinov2.py).

Recipe: dinov2/configs/ssl_default_config.yaml (+ dinov2/layers/dino_head.py: the prototype
layer's weight-norm gain is trained); deviations in configs/README.md ("Recipes").
"""

from equirecon.methods import MethodSpec, register_spec

SPEC = register_spec(
    MethodSpec(
        name="dinov2",
        d_patch=2048,
        d_equi=512,
        recipe={
            "train.lr_scaling": "sqrt_1024",  # optim.scaling_rule: sqrt_wrt_1024
            "train.layerwise_decay": 0.9,  # optim.layerwise_decay
            "train.patch_embed_lr_mult": 0.2,  # optim.patch_embed_lr_mult
            "train.freeze_last_layer_steps": 1250,  # freeze_last_layer_epochs 1 x 1250 iters
            "train.weight_decay_tokens": True,  # param_groups.py: only bias/norm/gamma skip decay
            "model.layerscale": 1e-5,  # student.layerscale
            "model.drop_path_uniform": True,  # student.drop_path_uniform
            "method.norm_last_layer": False,  # weight_g of the last layer is trained
        },
        summary="DINO CLS loss (Sinkhorn-Knopp) + iBOT masked-patch loss + KoLeo, EMA teacher",
    )
)
