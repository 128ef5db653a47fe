"""Evaluation tasks as torch-free specs: what the config knows of each name in `eval.tasks`.

Every evaluation task is declared twice under one name, in two files and nowhere else:

- ``equirecon/eval_tasks/<name>.py`` (this package, torch-free): a dataclass of the task's
  settings (the keys ``eval.<name>.<field>``, e.g. ``eval.knn.k``) and an `EvalTaskSpec` passed to
  `register_task_spec` with the value checks of those keys and the task's place in
  ``eval.tasks=all``. `equirecon.config` builds the ``eval`` section from these and validates
  them; the CLI lists the names;
- ``evals/tasks/<name>.py``: the torch implementation, ``@register_task(<name>)``, which reads
  its settings as ``ctx.cfg.<name>``.

Both packages import each of their modules on import, so adding a task is adding these two files
(and their tests); `tests/evals/test_task_registry.py` checks the two registries agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from equirecon.checks import Rule
from equirecon.registry import import_submodules


@dataclass(frozen=True)
class EvalTaskSpec:
    """What the config system knows of one evaluation task (no torch).

    Attributes:
        name: the name in `eval.tasks` and of the config section `eval.<name>` (the torch
            implementation in evals/tasks registers under the same name).
        settings: a dataclass whose fields, all with defaults, are the keys `eval.<name>.<field>`.
        checks: field name -> rule (`equirecon.checks`) its value must pass; None values (a
            default "the data's own") are not checked.
        order: where the task comes in `eval.tasks=all`, the default `eval.tasks` and listings
            (then by name).
        summary: one line for the CLI help.
        data: the subsets of a dataset root the task reads (`natural`, `labelled`,
            `segmentation`, `depth`), train and val split of each. Where one is missing the task
            is skipped, or, named in `eval --tasks`, refused (`evals.dispatch.plan_tasks`).
    """

    name: str
    settings: type
    checks: Mapping[str, Rule] = field(default_factory=dict)
    order: int = 100
    summary: str = ""
    data: tuple[str, ...] = ()

    def value_checks(self) -> list[tuple[str, Rule]]:
        """(dotted key `eval.<name>.<field>`, rule) rows, in field order."""
        names = [f.name for f in dataclasses.fields(self.settings)]
        return [(f"eval.{self.name}.{n}", self.checks[n]) for n in names if n in self.checks]


_SPECS: dict[str, EvalTaskSpec] = {}


def register_task_spec(spec: EvalTaskSpec) -> EvalTaskSpec:
    """Add a task's spec under `spec.name` (once); returns it."""
    if not spec.name or not spec.name.isidentifier():
        raise ValueError(f"eval task spec name {spec.name!r}: must be a Python identifier")
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"eval task spec {spec.name!r} registered twice")
    if not dataclasses.is_dataclass(spec.settings):
        raise ValueError(f"eval task spec {spec.name!r}: settings must be a dataclass")
    fields = dataclasses.fields(spec.settings)
    no_default = dataclasses.MISSING
    missing = [
        f.name for f in fields if f.default is no_default and f.default_factory is no_default
    ]
    if missing:
        raise ValueError(f"eval task spec {spec.name!r}: settings {missing} need defaults")
    unknown = sorted(set(spec.checks) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"eval task spec {spec.name!r}: checks of unknown settings {unknown}")
    _SPECS[spec.name] = spec
    return spec


def task_specs() -> list[EvalTaskSpec]:
    """The registered specs in `eval.tasks=all` order."""
    return sorted(_SPECS.values(), key=lambda s: (s.order, s.name))


def task_names() -> list[str]:
    """The registered `eval.tasks` names in `eval.tasks=all` order."""
    return [spec.name for spec in task_specs()]


def get_task_spec(name: str) -> EvalTaskSpec:
    """The spec of task `name`; KeyError naming the valid choices if there is none."""
    if name not in _SPECS:
        raise KeyError(f"unknown eval task {name!r}; available: {task_names()}")
    return _SPECS[name]


import_submodules(__name__, __path__)  # every spec module registers itself

__all__ = ["EvalTaskSpec", "get_task_spec", "register_task_spec", "task_names", "task_specs"]
