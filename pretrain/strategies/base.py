"""The registry of parallel strategies (see `pretrain.strategies`). Torch-free: config validation
and the CLI help read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from equirecon.config import register_choices
from equirecon.errors import ConfigError

# (method: SSLMethod, cfg: Config, device: torch.device, rule: GroupRule) -> Engine: wraps or
# shards `method` in place (after activation checkpointing and compile, `pretrain.parallel`) and
# returns the engine the training loop talks to (`pretrain.strategies.engine.Engine`).
EngineFactory = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True)
class Strategy:
    """A `train.strategy`: everything the engine, the trainer, the launchers and the config
    checks need to know of it.

    Attributes:
        name: the `train.strategy` value; also the `strategy` of its checkpoints' meta.json.
        build: the `EngineFactory` (imports torch and its libraries when called, not before).
        help: one line for the CLI help.
        checks: checks of a resolved config that selects this strategy (run by
            `equirecon.config.validate`), each raising `ConfigError` naming the key.
        several_ranks: the strategy that runs instead when the launcher started several
            processes (single: ddp). The Slurm launcher writes it into the submitted config.
        without_process_group: the strategy that runs instead when torch.distributed is not
            initialized (ddp in a plain single process: single).
        same_world_size: non-empty when its checkpoints resume only at the world size that wrote
            them: why (resuming at another world size is refused with this reason).
        own_checkpoint: non-empty when its checkpoints hold state that only this strategy reads
            back: what (resuming one under another strategy is refused, naming it).
    """

    name: str
    build: EngineFactory
    help: str = ""
    checks: tuple[Callable[[Any], None], ...] = ()
    several_ranks: str | None = None
    without_process_group: str | None = None
    same_world_size: str = ""
    own_checkpoint: str = ""


_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Adds `strategy` under its name (once); returns it.

    Raises:
        ValueError: the name is empty or registered already.
    """
    if not strategy.name:
        raise ValueError("a strategy needs a name")
    if strategy.name in _STRATEGIES:
        raise ValueError(f"parallel strategy {strategy.name!r} registered twice")
    _STRATEGIES[strategy.name] = strategy
    return strategy


def strategy_names() -> list[str]:
    """The registered `train.strategy` choices, sorted."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name`.

    Raises:
        ConfigError: no such strategy; the message names `train.strategy` and the choices.
    """
    if name not in _STRATEGIES:
        raise ConfigError(f"train.strategy={name!r}: must be one of {strategy_names()}")
    return _STRATEGIES[name]


def find_strategy(name: Any) -> Strategy | None:
    """The strategy registered as `name`, or None (e.g. the `strategy` of an old checkpoint's
    meta.json, which may name none)."""
    return _STRATEGIES.get(name) if isinstance(name, str) else None


def strategy_for(name: str, world_size: int, distributed: bool) -> Strategy:
    """The strategy that runs for `train.strategy=name` in a world of `world_size` processes
    (`distributed`: torch.distributed is initialized): `several_ranks`, then
    `without_process_group` applied where they are set."""
    strategy = get_strategy(name)
    if world_size > 1 and strategy.several_ranks:
        strategy = get_strategy(strategy.several_ranks)
    if not distributed and strategy.without_process_group:
        strategy = get_strategy(strategy.without_process_group)
    return strategy


def _checks_of(name: Any) -> tuple[Callable[[Any], None], ...]:
    strategy = find_strategy(name)
    return strategy.checks if strategy is not None else ()


# `validate` checks train.strategy against these names and runs the chosen strategy's checks
# (the core cannot import this layer).
register_choices("train.strategy", strategy_names, _checks_of)

__all__ = [
    "EngineFactory",
    "Strategy",
    "find_strategy",
    "get_strategy",
    "register_strategy",
    "strategy_names",
    "strategy_for",
]
