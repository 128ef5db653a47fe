"""Per-step schedules: learning rate, weight decay, teacher momentum, teacher temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass


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

    def at(self, step: int) -> dict[str, float]:
        t = self.total_steps
        if step < self.warmup_teacher_temp_steps:
            frac = step / self.warmup_teacher_temp_steps
            temp = self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)
        else:
            temp = self.teacher_temp
        return {
            "lr": cosine(step, t, self.lr, self.min_lr, self.warmup_steps),
            "weight_decay": cosine(step, t, self.weight_decay, self.weight_decay_end),
            "momentum": cosine(step, t, self.momentum, self.momentum_end),
            "teacher_temp": temp,
        }


def build_schedules(cfg, world_size: int) -> Schedules:  # noqa: ANN001 - Config
    """lr = base_lr · global_batch / 256 (DESIGN §1.9)."""
    tr, m = cfg.train, cfg.method
    return Schedules(
        total_steps=tr.max_steps,
        lr=tr.base_lr * tr.batch_size * world_size / 256,
        min_lr=tr.min_lr,
        warmup_steps=tr.warmup_steps,
        weight_decay=tr.weight_decay,
        weight_decay_end=tr.weight_decay_end,
        momentum=tr.momentum_teacher,
        momentum_end=tr.momentum_teacher_end,
        teacher_temp=m.teacher_temp,
        warmup_teacher_temp=m.warmup_teacher_temp,
        warmup_teacher_temp_steps=m.warmup_teacher_temp_steps,
    )
