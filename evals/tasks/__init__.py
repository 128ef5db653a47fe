"""Evaluation tasks as a registry: the names in `eval.tasks` -> the function running each.

A task is one module here whose function is decorated ``@register_task(<name>)``; it reads its
settings as ``ctx.cfg.<name>`` (the section ``eval.<name>.*``, declared by the torch-free spec of
the same name in ``equirecon/eval_tasks/<name>.py``). Every module of this package is imported
here, so a new task needs no edit of this file, nor of the harness (`evals.dispatch`), which
looks tasks up by name. `tests/evals/test_task_registry.py` checks both registries hold the same
names.
"""

from __future__ import annotations

from equirecon.registry import import_submodules
from evals.tasks.base import (
    EvalContext,
    TaskFn,
    TaskResult,
    get_task,
    register_task,
    registered_tasks,
)

import_submodules(__name__, __path__)  # every task module registers itself

__all__ = [
    "EvalContext",
    "TaskFn",
    "TaskResult",
    "get_task",
    "register_task",
    "registered_tasks",
]
