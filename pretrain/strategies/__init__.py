"""Parallel strategies: the name in ``train.strategy`` -> how the method is wrapped and trained.

A strategy is one module in this package that calls
:func:`~pretrain.strategies.base.register_strategy` when imported, with everything that is
particular to it (`base.Strategy`): the factory of its engine (wrapping or sharding the model,
the optimizer step, the EMA, checkpoint state: `engine.Engine` or a subclass in the module), its
help line, config checks, what launchers must know (the strategy that runs instead with several
processes, or without a process group) and the limits of its checkpoints. Importing this
package imports every module in it, so adding a strategy is one new file here (plus its tests).
`pretrain.parallel.build_engine`, the trainer, the Slurm launcher, the config check of
``train.strategy`` and the CLI help read the registry.

Strategy modules import torch and their libraries (DeepSpeed) inside their functions, so
reading the names stays cheap (no torch).
"""

from __future__ import annotations

from equirecon.registry import import_submodules
from pretrain.strategies.base import (
    EngineFactory,
    Strategy,
    find_strategy,
    get_strategy,
    register_strategy,
    strategy_for,
    strategy_names,
)

import_submodules(__name__, __path__)  # every strategy module registers itself

__all__ = [
    "EngineFactory",
    "Strategy",
    "find_strategy",
    "get_strategy",
    "register_strategy",
    "strategy_for",
    "strategy_names",
]
