"""The engine: what the training loop talks to, whatever the strategy.

`student_fn` (call it for the student forward), `optimizer` and `param_groups` (groups carry the
lr/wd multipliers of `pretrain/param_groups.py`), `zero_grad`, `backward`, `clip_grad_norm`,
`step`, `update_teacher`, and the checkpoint state (`state_to_save` / `state_to_load` /
`load_state`, `save_extra`). `Engine` is the plain loop (`loss.backward()`, clip,
`optimizer.step()`) of the single/ddp strategies; a strategy that runs differently subclasses it
in its own module.

This module imports torch inside the methods, not at import time: the strategy modules subclass
`Engine`, and config validation and the CLI help import those modules for their names.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def transformer_blocks(module: Any) -> list[Any]:
    """The transformer blocks of a student/teacher (`…encoder.backbone.blocks`); [] for None."""
    if module is None:
        return []
    return list(module.encoder.backbone.blocks)


def total_norm_value(norm: Any) -> float:
    """A total gradient norm as a float (the full value of a DTensor norm of sharded grads)."""
    if hasattr(norm, "full_tensor"):  # DTensor norm of sharded gradients
        norm = norm.full_tensor()
    return float(norm)


class Engine:
    """`single`/`ddp`: the plain loop (`loss.backward()`, clip, `optimizer.step()`).

    `name` is the strategy that runs (`pretrain.parallel.build_engine` sets it)."""

    name = "single"

    def __init__(self, method: Any, student_fn: Any, rule: Any = None) -> None:
        from pretrain.optimizer import build_optimizer

        self.method = method
        self.student_fn = student_fn
        self.optimizer = build_optimizer(method.student, rule=rule)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: Any) -> None:
        loss.backward()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip to `max_norm` (inf: measure only); the total norm before clipping."""
        import torch

        params = [p for p in self.method.student.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        value = total_norm_value(norm)  # the step's host sync (the loop reports and checks it)
        if math.isfinite(value) and value > max_norm:  # below: a pass over the grads saved
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return value

    def step(self, grad_norm: float) -> float:
        """Apply the update; returns the gradient norm to report (`grad_norm` from clipping)."""
        self.optimizer.step()
        return grad_norm

    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1 − m)·student, fused over the (local shards of) parameters:
        the method's own EMA (`SSLMethod.update_teacher`); strategies first make the parameters
        what it needs (FSDP2: resharded; ZeRO-3: gathered)."""
        import torch

        with torch.no_grad():
            self.method.update_teacher(momentum)

    # ---- checkpoint state (DCP): same keys and parameter names for every strategy ----------
    def state_to_save(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        m = self.method
        return {
            "student": get_model_state_dict(m.student),
            "teacher": get_model_state_dict(m.teacher) if m.teacher is not None else {},
            "optimizer": get_optimizer_state_dict(m.student, self.optimizer),
        }

    def state_to_load(self) -> dict[str, Any]:
        return self.state_to_save()

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        m = self.method
        set_model_state_dict(m.student, state["student"])
        if m.teacher is not None:
            set_model_state_dict(m.teacher, state["teacher"])
        set_optimizer_state_dict(m.student, self.optimizer, state["optimizer"])

    def save_extra(self, path: Path) -> None:
        """Strategy-specific files written into the checkpoint directory (all ranks)."""


__all__ = ["Engine", "total_norm_value", "transformer_blocks"]
