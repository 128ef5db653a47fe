"""Per-step schedules: learning rate, weight decay, teacher momentum, teacher temperature.

The optimizer's parameter groups carry multipliers (`pretrain/param_groups.py`): each step,
`apply_schedules` sets a group's lr to `lr_mult` × (the scheduled lr, or 0 for the frozen
prototype layer during `train.freeze_last_layer_steps`, or the backbone's lr below for the
student backbone) and its weight decay to `wd_mult` × the scheduled weight decay.

The backbone's own lr (continued pretraining from `model.init`; `train.freeze_backbone_steps`
F, `train.backbone_lr_scale` c, `train.backbone_warmup_steps` W), at step s (0-based):

    backbone_lr(s) = c · lr(s) · ramp(s),   ramp(s) = 0                      for s < F
                                                      min(1, (s − F + 1) / W)  for s ≥ F (W > 0)
                                                      1                        for s ≥ F (W = 0)

`lr(s)` is the run's schedule (warm-up over `train.warmup_steps` from step 0, then cosine to
`train.min_lr`, over `train.max_steps`): F and W do not shift it, and where the two warm-ups
overlap their factors multiply. So the backbone has lr exactly 0 for steps 0 … F−1, reaches
c · lr(s) at step F + W − 1, and each block then gets its layer-wise `lr_mult` on top. With lr 0
AdamW leaves a parameter bit-identical (its decoupled weight decay is lr · wd · p, its step
lr · m̂/(√v̂ + ε)), and the EMA teacher, a lerp towards an equal student, too; the backbone's
gradients still enter the clipping norm and its AdamW moments, as for the frozen prototype layer.
Defaults (0, 1, 0): backbone_lr = lr, the groups unmarked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from equirecon.config import LR_SCALING_RULES


def peak_lr(base_lr: float, global_batch: int, rule: str) -> float:
    """The lr after warm-up for a global batch of `global_batch` images.

    linear: base_lr·B/256 (iBOT, VICReg/SIE, SimCLR); sqrt_1024: base_lr·sqrt(B/1024) (DINOv2's
    `sqrt_wrt_1024`); none: base_lr.
    """
    if rule == "linear":
        return base_lr * global_batch / 256
    if rule == "sqrt_1024":
        return base_lr * math.sqrt(global_batch / 1024)
    if rule == "none":
        return base_lr
    raise ValueError(f"train.lr_scaling={rule!r}; choose one of {LR_SCALING_RULES}")


def cosine(
    step: int, total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0
) -> float:
    """Linear warm-up from `warmup_start` to `start` over `warmup` steps, then cosine to `end`."""
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / max(warmup, 1)
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


@dataclass
class Schedules:
    """All values of step `s` of a run of `total_steps`."""

    total_steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    momentum: float
    momentum_end: float
    teacher_temp: float
    warmup_teacher_temp: float
    warmup_teacher_temp_steps: int
    freeze_last_layer_steps: int = 0
    freeze_backbone_steps: int = 0
    backbone_lr_scale: float = 1.0
    backbone_warmup_steps: int = 0

    def backbone_ramp(self, step: int) -> float:
        """The backbone's factor: 0 while frozen, then a linear ramp to 1 (module doc)."""
        if step < self.freeze_backbone_steps:
            return 0.0
        if self.backbone_warmup_steps <= 0:
            return 1.0
        return min(1.0, (step - self.freeze_backbone_steps + 1) / self.backbone_warmup_steps)

    def at(self, step: int) -> dict[str, float]:
        t = self.total_steps
        if step < self.warmup_teacher_temp_steps:
            frac = step / self.warmup_teacher_temp_steps
            temp = self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)
        else:
            temp = self.teacher_temp
        lr = cosine(step, t, self.lr, self.min_lr, self.warmup_steps)
        return {
            "lr": lr,
            "last_layer_lr": 0.0 if step < self.freeze_last_layer_steps else lr,
            "backbone_lr": self.backbone_lr_scale * lr * self.backbone_ramp(step),
            "weight_decay": cosine(step, t, self.weight_decay, self.weight_decay_end),
            "momentum": cosine(step, t, self.momentum, self.momentum_end),
            "teacher_temp": temp,
        }


def build_schedules(cfg, world_size: int) -> Schedules:  # noqa: ANN001 - Config
    """The schedules of `cfg` for `world_size` ranks (peak lr by `train.lr_scaling`)."""
    tr, m = cfg.train, cfg.method
    return Schedules(
        total_steps=tr.max_steps,
        lr=peak_lr(tr.base_lr, tr.batch_size * world_size, tr.lr_scaling or "linear"),
        min_lr=tr.min_lr,
        warmup_steps=tr.warmup_steps,
        weight_decay=tr.weight_decay,
        weight_decay_end=tr.weight_decay_end,
        momentum=tr.momentum_teacher,
        momentum_end=tr.momentum_teacher_end,
        teacher_temp=m.teacher_temp,
        warmup_teacher_temp=m.warmup_teacher_temp,
        warmup_teacher_temp_steps=m.warmup_teacher_temp_steps,
        freeze_last_layer_steps=tr.freeze_last_layer_steps or 0,
        freeze_backbone_steps=tr.freeze_backbone_steps,
        backbone_lr_scale=tr.backbone_lr_scale,
        backbone_warmup_steps=tr.backbone_warmup_steps,
    )


def apply_schedules(param_groups: Iterable[dict[str, Any]], values: dict[str, float]) -> None:
    """Set each group's lr and weight decay for one step from `Schedules.at(step)` values.

    Groups without multipliers (built elsewhere) take the plain lr, and the scheduled weight
    decay where `apply_wd` is true. `backbone` groups take `backbone_lr`, `last_layer` groups
    `last_layer_lr` (the two never overlap).
    """
    for group in param_groups:
        if group.get("last_layer", False):
            lr = values["last_layer_lr"]
        elif group.get("backbone", False):
            lr = values["backbone_lr"]
        else:
            lr = values["lr"]
        group["lr"] = lr * group.get("lr_mult", 1.0)
        wd_mult = group.get("wd_mult", 1.0 if group.get("apply_wd", False) else None)
        if wd_mult is not None:
            group["weight_decay"] = values["weight_decay"] * wd_mult
