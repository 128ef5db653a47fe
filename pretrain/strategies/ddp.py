"""`train.strategy=ddp`: `DistributedDataParallel` on the student (gradients all-reduced in
backward); the plain loop of `Engine`. Without a process group (one plain process): `single`."""

from __future__ import annotations

from typing import Any

from pretrain.strategies.base import Strategy, register_strategy
from pretrain.strategies.engine import Engine


def build(method: Any, cfg: Any, device: Any, rule: Any) -> Engine:
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return Engine(method, DDP(method.student, device_ids=ids), rule)


STRATEGY = register_strategy(
    Strategy(
        name="ddp",
        build=build,
        help="DistributedDataParallel: replicated student, gradients all-reduced",
        without_process_group="single",
    )
)
