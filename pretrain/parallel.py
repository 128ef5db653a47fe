"""Parallelization: one pass over the plain method modules, chosen by `train.strategy`.

The method (student, teacher, heads, decoders, losses) is built as plain `nn.Module`s that know
nothing about distribution. `build_engine` then applies, in this order: activation checkpointing
(`train.activation_checkpointing`), `torch.compile` of each transformer block (`train.compile`),
and the data-parallel wrapper of `train.strategy`, from the registry of strategies
(`pretrain/strategies/`: single, ddp, fsdp2, deepspeed; each module says what it does).

The engine it returns is what the training loop talks to (`pretrain.strategies.engine.Engine`).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn

from pretrain.param_groups import GroupRule
from pretrain.strategies import strategy_for
from pretrain.strategies.engine import Engine, transformer_blocks


def apply_activation_checkpointing(module: nn.Module) -> None:
    """Recompute each block's activations in backward (parameter names are unchanged)."""
    from torch.distributed._composable import checkpoint

    for block in transformer_blocks(module):
        checkpoint(block)


def apply_compile(module: nn.Module | None, backend: str = "inductor") -> None:
    """`torch.compile` each transformer block in place (parameter names are unchanged)."""
    for block in transformer_blocks(module):
        block.compile(backend=backend)


def build_engine(method: nn.Module, cfg: Any, device: Any) -> Engine:
    """Parallelize `method` in place for `train.strategy` and return its engine, whose `name`
    is the strategy that runs (`Strategy.several_ranks` / `without_process_group` applied)."""
    tr = cfg.train
    world = dist.get_world_size() if dist.is_initialized() else 1
    strategy = strategy_for(tr.strategy, world, dist.is_initialized())
    rule = GroupRule.from_config(cfg)
    if tr.activation_checkpointing:
        apply_activation_checkpointing(method.student)
    if tr.compile:
        apply_compile(method.student, tr.compile_backend)
        apply_compile(method.teacher, tr.compile_backend)
    engine = strategy.build(method, cfg, device, rule)
    engine.name = strategy.name
    return engine


__all__ = ["apply_activation_checkpointing", "apply_compile", "build_engine"]
