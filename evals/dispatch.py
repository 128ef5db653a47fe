"""Task dispatch: which tasks to run, and running them on a frozen feature provider.

Tasks are looked up by name in the registry of `evals.tasks` (one module per task); their order
in `eval.tasks=all` is that of their specs (`equirecon.eval_tasks`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from equirecon.checks import split_names
from equirecon.config import EvalConfig
from equirecon.errors import ConfigError
from equirecon.eval_tasks import task_names
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
    task's numbers do not depend on which tasks ran before it.

    Returns:
        {"metrics": {name: value}, "details": {task: ...}, "task_seconds": {task: s}}.
    """
    ctx = EvalContext(eval_cfg, str(data), int(img_size), device, progress)
    provider.to(device)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for task in tasks:
        run = get_task(task)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(eval_cfg.seed)
            task_metrics, details[task] = run(provider, ctx)
        metrics.update(task_metrics)
        seconds[task] = round(time.perf_counter() - t0, 2)
        log.info("eval %s (%s) done in %.1fs: %s", task, provider.name, seconds[task], task_metrics)
    return {"metrics": metrics, "details": jsonable(details), "task_seconds": seconds}


def jsonable(obj: Any) -> Any:
    """`obj` with tensors as lists and keys as strings (for the JSON result file)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


__all__ = ["jsonable", "parse_tasks", "run_tasks"]
