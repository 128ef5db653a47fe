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

Probe settings. A task whose numbers depend on settings that make them incomparable (the
equivariance probe's view and features) gives its spec a `probe`: the label of those settings,
e.g. "full/global". Its results are then kept apart by label: each metric `eval/<task>/<name>`
is also reported as `eval/<task>/<label>/<name>` (`qualified_metric`, added by the dispatcher),
and an eval whose label is not the run config's writes its own results file
(`step_X.<tag>.json`, `probe_tag`) and logs only the qualified names to MLflow (`evals.run`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
            `segmentation`, `depth`), train and val split of each, under its default settings.
            Where one is missing the task is skipped, or, named in `eval --tasks`, refused
            (`evals.dispatch.plan_tasks`).
        data_of: where the subsets read depend on the task's settings (e.g.
            `eval.equivariance.subset`): those subsets, from its settings; None: always `data`.
        probe: the label of the settings that make the task's numbers incomparable, from its
            settings (the dataclass, or its dict as saved; None where the dict does not record
            them); None: the task has no such settings (see "Probe settings" above).
    """

    name: str
    settings: type
    checks: Mapping[str, Rule] = field(default_factory=dict)
    order: int = 100
    summary: str = ""
    data: tuple[str, ...] = ()
    probe: Callable[[Any], str | None] | None = None
    data_of: Callable[[Any], tuple[str, ...]] | None = None

    def subsets(self, settings: Any = None) -> tuple[str, ...]:
        """The subsets the task reads under `settings` (its dataclass; None: `data`)."""
        if settings is None or self.data_of is None:
            return self.data
        return tuple(self.data_of(settings))

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


# --- probe settings in metric and file names ------------------------------------------------

UNKNOWN_PROBE = "?"
"""The label of a result that does not record its probe settings (written by hand, or before
they existed); never logged, only shown by `equirecon report`."""


def task_probes(tasks: Iterable[str], settings: Any) -> dict[str, str]:
    """{task: probe label} of the tasks among `tasks` that have a probe, under the `eval`
    settings `settings` (an `EvalConfig`, or its dict as saved: tasks it records no probe of are
    left out)."""
    probes = {}
    for name in tasks:
        spec = _SPECS.get(name)
        if spec is None or spec.probe is None:
            continue
        if isinstance(settings, Mapping):
            section = settings.get(name)
            label = spec.probe(section) if isinstance(section, Mapping) else None
        else:
            label = spec.probe(getattr(settings, name))
        if label is not None:
            probes[name] = label
    return probes


def probe_tag(probes: Mapping[str, str]) -> str:
    """The results-file tag of probe labels: {"equivariance": "full/global"} -> "full-global"
    (several joined by ".")."""
    return ".".join(label.replace("/", "-") for _, label in sorted(probes.items()))


def is_unqualified_metric(metric: str, tasks: Iterable[str]) -> bool:
    """Whether `metric` is `eval/<task>/<name>` of one of `tasks` (no probe label in it)."""
    parts = metric.split("/")
    return len(parts) == 3 and parts[0] == "eval" and parts[1] in set(tasks)


def qualified_metric(metric: str, probes: Mapping[str, str]) -> str:
    """`eval/<task>/<name>` -> `eval/<task>/<label>/<name>` for a task of `probes`; any other
    name as it is."""
    if not is_unqualified_metric(metric, probes):
        return metric
    _, task, name = metric.split("/")
    return f"eval/{task}/{probes[task]}/{name}"


def split_qualified_metric(metric: str) -> tuple[str, str] | None:
    """`eval/<task>/<label>/<name>` of a task with a probe -> (label, `eval/<task>/<name>`);
    None for any other name."""
    parts = metric.split("/")
    spec = _SPECS.get(parts[1]) if len(parts) >= 4 and parts[0] == "eval" else None
    if spec is None or spec.probe is None or not all(parts):
        return None
    return "/".join(parts[2:-1]), f"eval/{parts[1]}/{parts[-1]}"


import_submodules(__name__, __path__)  # every spec module registers itself

__all__ = [
    "UNKNOWN_PROBE",
    "EvalTaskSpec",
    "get_task_spec",
    "is_unqualified_metric",
    "probe_tag",
    "qualified_metric",
    "register_task_spec",
    "split_qualified_metric",
    "task_names",
    "task_probes",
    "task_specs",
]
