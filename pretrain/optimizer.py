"""The optimizer of every strategy: AdamW over the parameter groups of `pretrain.param_groups`."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.param_groups import GroupRule, param_groups


def build_optimizer(
    student: nn.Module, fused: bool | None = None, rule: GroupRule | None = None
) -> torch.optim.Optimizer:
    """AdamW over the parameter groups of `rule` (`pretrain.param_groups`; None: no layer-wise
    decay or freeze, weight decay only on matrices that are not tokens/position embedding).

    `fused`: torch's fused AdamW kernel (one pass over each tensor: on CPU ~4x faster than the
    per-tensor loop torch picks by default there). None: fused for plain CPU/CUDA float
    tensors, the multi-tensor (`foreach`) kernel for sharded DTensors (FSDP2).
    """
    groups = param_groups(student, rule)
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = all(
            type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
            for p in params
        )
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), **kernel)
