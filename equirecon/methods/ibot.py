"""iBOT's spec (torch implementation: pretrain/methods/ibot.py).

Recipe: main_ibot.py + the README's ViT-S/16 command (norm_last_layer false); deviations in
configs/README.md ("Recipes").
"""

from equirecon.methods import ARCH_OWN, MethodSpec, register_spec

SPEC = register_spec(
    MethodSpec(
        name="ibot",
        d_patch=8192,
        d_equi=2048,
        recipe={
            "train.lr_scaling": "linear",  # lr * batch / 256
            "train.layerwise_decay": 1.0,
            "train.patch_embed_lr_mult": 1.0,
            "train.freeze_last_layer_steps": 1251,  # --freeze_last_layer 1 epoch (IN-1k, B 1024)
            "train.weight_decay_tokens": True,  # utils.get_params_groups: only bias/1-d skip decay
            "model.layerscale": ARCH_OWN,  # init_values 0
            "model.drop_path_uniform": False,  # linspace(0, drop_path, depth)
            "method.norm_last_layer": False,  # README: --norm_last_layer false
        },
        summary="DINO CLS loss + masked-patch self-distillation, centered EMA teacher",
    )
)
