"""`train.strategy=fsdp2`: `fully_shard` per transformer block, then per called root (student;
teacher encoder and head), with a bf16-params / fp32-reduce policy on devices with bf16 support
when `train.precision=bf16`. The EMA teacher is sharded exactly like the student, so its update
is a fused elementwise op on the local shards. Checkpoints are DCP (they reshard to any world
size and to the other DCP strategies)."""

from __future__ import annotations

import logging
from typing import Any

from pretrain.strategies.base import Strategy, register_strategy
from pretrain.strategies.engine import Engine, transformer_blocks

log = logging.getLogger("equirecon.parallel")


class FSDP2Engine(Engine):
    name = "fsdp2"

    def _reshard_all(self) -> None:
        """Back to sharded parameters: FSDP2 roots (the teacher's encoder/head) stay unsharded
        after their forward, and the EMA must see the sharded DTensors on both sides."""
        from torch.distributed.fsdp import FSDPModule

        for module in (self.method.student, self.method.teacher):
            if module is None:
                continue
            for sub in module.modules():
                if isinstance(sub, FSDPModule):
                    sub.reshard()

    def update_teacher(self, momentum: float) -> None:
        import torch

        with torch.no_grad():
            self._reshard_all()
            super().update_teacher(momentum)


def shard(method: Any, cfg: Any, device: Any) -> None:
    """`fully_shard` the student and the teacher of `method` in place (see the module doc)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    world = dist.get_world_size() if dist.is_initialized() else 1
    if not dist.is_initialized():
        raise RuntimeError(
            "train.strategy=fsdp2 needs torch.distributed: launch with torchrun (even "
            "--nproc_per_node=1) or Slurm"
        )
    mesh = init_device_mesh(device.type, (world,))
    bf16_params = (
        cfg.train.precision == "bf16"
        and device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    )
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16_params
        else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(method.student):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(method.student, mesh=mesh, mp_policy=policy)
    teacher = method.teacher
    if teacher is not None:
        for block in transformer_blocks(teacher):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        # The method calls the teacher's encoder and head directly, so each is its own root.
        for name, child in teacher.named_children():
            if any(p.numel() for p in child.parameters()):
                fully_shard(child, mesh=mesh, mp_policy=policy)
                log.debug("fsdp2: sharded teacher.%s", name)


def build(method: Any, cfg: Any, device: Any, rule: Any) -> FSDP2Engine:
    shard(method, cfg, device)
    return FSDP2Engine(method, method.student, rule)


STRATEGY = register_strategy(
    Strategy(
        name="fsdp2",
        build=build,
        help="FSDP2 fully_shard per block (torchrun/Slurm, even one process)",
    )
)
