"""`train.strategy=single`: one process, no wrapper (several launched processes run `ddp`)."""

from __future__ import annotations

from typing import Any

from pretrain.strategies.base import Strategy, register_strategy
from pretrain.strategies.engine import Engine


def build(method: Any, cfg: Any, device: Any, rule: Any) -> Engine:
    return Engine(method, method.student, rule)


STRATEGY = register_strategy(
    Strategy(
        name="single",
        build=build,
        help="one process, no wrapper (launched as several processes: ddp)",
        several_ranks="ddp",
    )
)
