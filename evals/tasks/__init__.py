"""Evaluation tasks as a registry: the names in `eval.tasks` -> the function running each.

A task is one module here whose function is decorated ``@register_task(<name>)``; it reads its
settings as ``ctx.cfg.<name>`` (the section ``eval.<name>.*``, declared by the torch-free spec of
the same name in ``equirecon/eval_tasks/<name>.py``). Every module of this package is imported
here, so a new task needs no edit of this file, nor of the harness (`evals.dispatch`), which
looks tasks up by name. `tests/evals/test_task_registry.py` checks both registries hold the same
names.
"""

from __future__ import annotations

import importlib
import pkgutil

from evals.tasks.base import (
    EvalContext,
    TaskFn,
    TaskResult,
    get_task,
    register_task,
    registered_tasks,
)

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_") and _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "EvalContext",
    "TaskFn",
    "TaskResult",
    "get_task",
    "register_task",
    "registered_tasks",
]
