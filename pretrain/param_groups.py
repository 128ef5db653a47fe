"""Optimizer parameter groups with per-parameter lr and weight-decay multipliers.

Each trainable parameter of the student gets (as DINOv2's `get_params_groups_with_decay`):

- `lr_mult`: layer-wise lr decay over the backbone. With n blocks and rate r, block i (0-based)
  gets r^(n - i); the embeddings (patch embedding, position embedding, cls/register/mask
  tokens) r^(n + 1); the rest of the backbone (final norm) and every module outside it (split
  head, method heads, decoders) 1. The patch embedding's is further multiplied by
  `patch_embed_lr_mult`.
- `wd_mult`: 0 for biases, norms and LayerScale gains (every tensor of ndim <= 1) except the
  prototype layer's trained gain; 0 for the position embedding and tokens unless
  `weight_decay_tokens`; else 1.
- `last_layer`: the prototype layer of the DINO/iBOT head (`prototypes`, `prototype_gain`),
  whose lr is 0 during `train.freeze_last_layer_steps` (only marked when that is > 0).
- `backbone`: every parameter of the student backbone (`encoder.backbone.*`, the mask token
  included), whose lr follows the backbone's own schedule (`train.freeze_backbone_steps`,
  `train.backbone_lr_scale`, `train.backbone_warmup_steps`; only marked when one of them is
  not its default, so that the groups, and the checkpoints' optimizer state, of other runs stay
  as they were).

Parameters with equal (lr_mult, wd_mult, last_layer, backbone) share one group; groups with
weight decay come first. With every multiplier 1 and no freeze that is the two groups
[decay, no decay] of before. `pretrain.schedules.apply_schedules` turns the multipliers into
each step's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

BACKBONE_PREFIX = "encoder.backbone."
EMBEDDING_NAMES = (
    "vit.patch_embed.",
    "vit.pos_embed",
    "vit.cls_token",
    "vit.reg_token",
    "mask_token",
)
TOKEN_SUFFIXES = ("token", "pos_embed")
LAST_LAYER_NAMES = ("prototypes", "prototype_gain")  # DINOHead's prototype layer
_BLOCK = re.compile(r"^vit\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class GroupRule:
    """How lr/wd multipliers are assigned (the `train.*` recipe keys, resolved)."""

    layerwise_decay: float = 1.0
    patch_embed_lr_mult: float = 1.0
    freeze_last_layer: bool = False
    weight_decay_tokens: bool = False
    backbone_schedule: bool = False  # the backbone's groups apart, marked `backbone`

    @classmethod
    def from_config(cls, cfg: Any) -> GroupRule:
        tr = cfg.train
        return cls(
            layerwise_decay=1.0 if tr.layerwise_decay is None else tr.layerwise_decay,
            patch_embed_lr_mult=1.0 if tr.patch_embed_lr_mult is None else tr.patch_embed_lr_mult,
            freeze_last_layer=bool(tr.freeze_last_layer_steps),
            weight_decay_tokens=bool(tr.weight_decay_tokens),
            backbone_schedule=has_backbone_schedule(cfg),
        )


def has_backbone_schedule(cfg: Any) -> bool:
    """Whether the backbone's lr has its own schedule (a `train.*` backbone key set)."""
    tr = cfg.train
    return bool(tr.freeze_backbone_steps or tr.backbone_warmup_steps or tr.backbone_lr_scale != 1.0)


@dataclass(frozen=True)
class Multipliers:
    lr_mult: float
    wd_mult: float
    last_layer: bool
    backbone: bool = False


def _num_blocks(names: list[str]) -> int:
    ids = [int(m.group(1)) for n in names if (m := _BLOCK.match(n[len(BACKBONE_PREFIX) :]))]
    return max(ids) + 1 if ids else 0


def param_multipliers(student: nn.Module, rule: GroupRule | None = None) -> dict[str, Multipliers]:
    """{parameter name: its multipliers} for every trainable parameter of `student`."""
    rule = rule or GroupRule()
    params = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    n_blocks = _num_blocks([n for n, _ in params if n.startswith(BACKBONE_PREFIX)])
    out: dict[str, Multipliers] = {}
    for name, p in params:
        lr_mult = 1.0
        in_backbone = name.startswith(BACKBONE_PREFIX)
        if in_backbone:
            local = name[len(BACKBONE_PREFIX) :]
            block = _BLOCK.match(local)
            if block:
                lr_mult = rule.layerwise_decay ** (n_blocks - int(block.group(1)))
            elif local.startswith(EMBEDDING_NAMES):
                lr_mult = rule.layerwise_decay ** (n_blocks + 1)
            if local.startswith("vit.patch_embed."):
                lr_mult *= rule.patch_embed_lr_mult
        leaf = name.rsplit(".", 1)[-1]
        last_layer = leaf in LAST_LAYER_NAMES
        if last_layer and leaf == "prototype_gain":
            wd_mult = 1.0  # the recipes decay the weight-norm gain (a (K, 1) tensor there)
        elif p.ndim <= 1:
            wd_mult = 0.0
        elif name.endswith(TOKEN_SUFFIXES):
            wd_mult = 1.0 if rule.weight_decay_tokens else 0.0
        else:
            wd_mult = 1.0
        out[name] = Multipliers(
            lr_mult,
            wd_mult,
            last_layer and rule.freeze_last_layer,
            in_backbone and rule.backbone_schedule,
        )
    return out


def param_groups(student: nn.Module, rule: GroupRule | None = None) -> list[dict[str, Any]]:
    """Optimizer groups of `student`: parameters fused by multipliers, decayed groups first.

    Each group: `params`, `lr_mult`, `wd_mult`, `last_layer`, `apply_wd` (= wd_mult > 0),
    `weight_decay` 0 where wd_mult is 0, and `backbone` where `rule.backbone_schedule`.
    """
    rule = rule or GroupRule()
    mults = param_multipliers(student, rule)
    by_key: dict[Multipliers, list[nn.Parameter]] = {}
    for name, p in student.named_parameters():
        if name in mults:
            by_key.setdefault(mults[name], []).append(p)
    keys = [k for k in by_key if k.wd_mult > 0] + [k for k in by_key if k.wd_mult == 0]
    groups = []
    for k in keys:
        group: dict[str, Any] = {
            "params": by_key[k],
            "lr_mult": k.lr_mult,
            "wd_mult": k.wd_mult,
            "last_layer": k.last_layer,
            "apply_wd": k.wd_mult > 0,
        }
        if k.wd_mult == 0:
            group["weight_decay"] = 0.0
        if rule.backbone_schedule:
            group["backbone"] = k.backbone
        groups.append(group)
    return groups
