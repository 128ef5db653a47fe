"""Task dispatch: which tasks to run, and running them on a frozen feature provider.

Tasks are looked up by name in the registry of `evals.tasks` (one module per task); their order
in `eval.tasks=all` is that of their specs (`equirecon.eval_tasks`).

Data. Each spec names the subsets of a dataset root its task reads (`EvalTaskSpec.data`, or
under the eval settings `EvalTaskSpec.subsets`: the equivariance probe reads
`eval.equivariance.subset`).
`plan_tasks` skips a task whose subset (train or val split) is missing from the root, with one
warning line, when the tasks come from `eval.tasks` (or `all`); a task named explicitly is
refused instead (a `MissingPathError`, exit code 2), and so is a run left with no task at all.
A task that fails while running is recorded (`failed` in the outcome) and the others go on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from equirecon.checks import split_names
from equirecon.config import EvalConfig
from equirecon.errors import ConfigError, DataError, MissingPathError, UserError
from equirecon.eval_tasks import (
    get_task_spec,
    qualified_metric,
    task_names,
    task_probes,
    task_specs,
)
from evals.providers import FeatureProvider
from evals.tasks import EvalContext, get_task, registered_tasks

log = logging.getLogger("equirecon.eval")


def parse_tasks(text: str | list[str] | None, default: str) -> list[str]:
    """Task names from "a,b" (or "all"); unknown names are errors listing the valid ones."""
    items = split_names(text) if isinstance(text, str) else list(text or [])
    tasks = items or split_names(default)
    known = [name for name in task_names() if name in registered_tasks()]
    if tasks == ["all"]:
        return known
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"unknown eval task(s) {unknown}; available: {', '.join(known)} or all")
    return tasks


SPLITS = ("train", "val")


def explicit_tasks(text: str | list[str] | None) -> bool:
    """Whether `text` (`eval --tasks`) names tasks itself (not empty, not `all`)."""
    items = split_names(text) if isinstance(text, str) else list(text or [])
    return bool(items) and items != ["all"]


def is_dataset_root(data: str) -> bool:
    """Whether `data` is a dataset root: a folder with `manifest.json` or a subset folder that
    some task reads (not a folder of shards, a glob or a tar file)."""
    root = Path(data)
    subsets = {subset for spec in task_specs() for subset in spec.data}
    return root.is_dir() and (
        (root / "manifest.json").is_file() or any((root / s).is_dir() for s in subsets)
    )


def missing_data(task: str, data: str, settings: EvalConfig | None = None) -> str | None:
    """Why the dataset root `data` lacks what `task` reads (under the eval settings `settings`;
    None: its default subsets), or None.

    Only a dataset root is checked; a folder of shards, a glob or a tar file gives every task
    the same shards.
    """
    if not is_dataset_root(data):
        return None
    from data_pipeline.formats import how_to_make

    root = Path(data)
    spec = get_task_spec(task)
    for subset in spec.subsets(getattr(settings, task, None) if settings is not None else None):
        for split in SPLITS:
            if any((root / subset).glob(f"{split}-*.tar")):
                continue
            make = how_to_make(subset, data, split)
            if not (root / subset).is_dir():
                return f"no {subset}/ subset in {data} (make one with {make})"
            return f"no {subset}/{split}-*.tar shards in {data} (make them with {make})"
    return None


def plan_tasks(
    tasks: list[str], data: str, explicit: bool = False, settings: EvalConfig | None = None
) -> tuple[list[str], dict[str, str]]:
    """The tasks whose data `data` holds, and the others with the reason ({task: why}).

    Args:
        tasks: the task names (`parse_tasks`).
        data: the dataset root (or shards) the tasks read.
        explicit: the tasks were named by the user (`eval --tasks`): missing data is an error.
        settings: the eval settings, for tasks whose subsets depend on them
            (`EvalTaskSpec.subsets`); None: every task's default subsets.

    Raises:
        MissingPathError: `data` does not exist, or an explicit task lacks its data.
        DataError: no task has its data.
    """
    from data_pipeline.shards import resolve_shards

    if not is_dataset_root(data):
        resolve_shards(str(data))  # shards, a glob or a tar file: raises if it names none
    skipped = {task: why for task in tasks if (why := missing_data(task, data, settings))}
    if skipped and explicit:
        raise MissingPathError(
            "; ".join(f"eval task {task}: {why}" for task, why in skipped.items()),
            hint="make the subset as said, or leave the task out of --tasks",
        )
    to_run = [task for task in tasks if task not in skipped]
    if not to_run:
        raise DataError(
            f"no eval task has its data in {data}: "
            + "; ".join(f"{task}: {why}" for task, why in skipped.items()),
            hint="check --data / eval.data, or make a subset as said",
        )
    for task, why in skipped.items():
        log.warning("skipped %s: %s", task, why)
    return to_run, skipped


def run_tasks(
    provider: FeatureProvider,
    eval_cfg: EvalConfig,
    tasks: list[str],
    data: str,
    img_size: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Run `tasks` on a frozen feature provider.

    Each task starts from the global RNG seeded with `eval.seed` (restored afterwards), so a
    task's numbers do not depend on which tasks ran before it. A task that raises is logged
    (with its traceback unless it is a `UserError`) and recorded in "failed"; the others run.
    The metrics of a task with a probe (`EvalTaskSpec.probe`) are given under their names and
    again under their probe-qualified names (`eval/<task>/<label>/<name>`).

    Returns:
        {"metrics": {name: value}, "details": {task: ...}, "task_seconds": {task: s},
        "failed": {task: "ErrorType: message"}}.
    """
    ctx = EvalContext(eval_cfg, str(data), int(img_size), device, progress)
    provider.to(device)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    for task in tasks:
        run = get_task(task)
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(eval_cfg.seed)
                task_metrics, details[task] = run(provider, ctx)
        except Exception as err:  # noqa: BLE001 - one task's failure must not lose the others
            seconds[task] = round(time.perf_counter() - t0, 2)
            failed[task] = f"{type(err).__name__}: {err}"
            log.error(
                "eval %s (%s) failed after %.1fs: %s", task, provider.name, seconds[task],
                failed[task], exc_info=not isinstance(err, UserError),  # user errors: one line
            )  # fmt: skip
            continue
        probes = task_probes([task], eval_cfg)
        metrics.update(task_metrics)
        for name, value in task_metrics.items():
            if (qualified := qualified_metric(name, probes)) != name:
                metrics[qualified] = value
        seconds[task] = round(time.perf_counter() - t0, 2)
        log.info("eval %s (%s) done in %.1fs: %s", task, provider.name, seconds[task], task_metrics)
    return {
        "metrics": metrics,
        "details": jsonable(details),
        "task_seconds": seconds,
        "failed": failed,
    }


def jsonable(obj: Any) -> Any:
    """`obj` with tensors as lists and keys as strings (for the JSON result file)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


__all__ = [
    "explicit_tasks",
    "is_dataset_root",
    "jsonable",
    "missing_data",
    "parse_tasks",
    "plan_tasks",
    "run_tasks",
]
