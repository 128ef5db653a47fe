"""The eval result files of a run directory (no torch: the watcher and reports import this):
reading them back, and making and writing one evaluation's record.

`RUN_DIR/evals/step_XXXXXXXX.json` holds one checkpoint's evaluation (`metrics` named as in
DESIGN §5; `init`: the `model.init` file the run started from, whose step 0 is that starting
model, `starting_model`); `RUN_DIR/evals/floor_<name>.json` a floor's (raw pixels, random-init
ViT). An eval with other probe settings than the run config's (`equirecon.eval_tasks`: "Probe
settings"; the equivariance view and features) goes to `step_XXXXXXXX.<tag>.json`
(`floor_<name>.<tag>.json`, tag e.g. `full-global`) instead, so probes never overwrite each
other. Their paths are those of `equirecon.rundir` (the run-directory layout).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from equirecon.config_files import flatten, rename_moved_keys
from equirecon.errors import ConfigError, StorageError
from equirecon.eval_tasks import (
    UNKNOWN_PROBE,
    qualified_metric,
    task_names,
    task_probes,
    task_specs,
)
from equirecon.rundir import EVALS_DIR, FLOOR_FILE_RE, RESULT_FILE_RE, write_json_atomic

log = logging.getLogger(__name__)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def read_step_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every `evals/step_*.json` of a run, those of other probes (`step_X.<tag>.json`) included,
    sorted by step, the run's configured eval (`step_X.json`) last within a step; each with
    "path" set (unreadable files are skipped)."""
    folder = Path(run_dir) / EVALS_DIR
    results = []
    for path in sorted(folder.glob("step_*.json")) if folder.is_dir() else []:
        match = RESULT_FILE_RE.match(path.name)
        if not match or (result := _read(path)) is None:
            continue
        result.setdefault("step", int(match.group(1)))
        result["path"] = str(path)
        results.append((int(result["step"]), match.group(2) is None, path.name, result))
    return [r for *_, r in sorted(results, key=lambda r: r[:3])]


def read_floor_results(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """{floor name: its metrics, probe-labelled (`labelled_metrics`)} from every
    `evals/floor_<name>[.<tag>].json` of a run; a floor's files are merged, `floor_<name>.json`
    last."""
    folder = Path(run_dir) / EVALS_DIR
    found = []
    for path in sorted(folder.glob("floor_*.json")) if folder.is_dir() else []:
        match = FLOOR_FILE_RE.match(path.name)
        name = match.group(1) if match else path.stem[len("floor_") :]
        tagged = bool(match and match.group(2))
        if (result := _read(path)) is not None:
            found.append((name, not tagged, path.name, result))
    floors: dict[str, dict[str, float]] = {}
    for name, _, _, result in sorted(found, key=lambda f: f[:3]):
        floors.setdefault(name, {}).update(labelled_metrics(result))
    return floors


def result_probes(result: Mapping[str, Any]) -> dict[str, str]:
    """{task: probe label} a result (or {"eval": a run config's eval section}) came from: its
    "probes", else its eval settings (nested, or the flat keys of files written before the task
    registry); tasks it records no probe of are left out."""
    if isinstance(result.get("probes"), Mapping):
        return dict(result["probes"])
    settings = result.get("eval")
    if not isinstance(settings, Mapping):
        return {}
    try:
        flat = rename_moved_keys(flatten({"eval": dict(settings)}), where=None)
    except ConfigError:  # a hand-edited file naming one setting twice: no probe recorded
        return {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        parts = key.split(".")
        if len(parts) == 3:
            nested.setdefault(parts[1], {})[parts[2]] = value
    return task_probes(task_names(), nested)


def labelled_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """A result's metrics with every number of a task with a probe under its probe-qualified
    name only: `eval/equivariance/<name>` becomes `eval/equivariance/<view>/<features>/<name>`
    with the probe the result records (`result_probes`; "?" where it records none). What
    reports show, so that numbers of different probes never share a name."""
    metrics = result.get("metrics") or {}
    probes = result_probes(result)
    labelled = [spec.name for spec in task_specs() if spec.probe is not None]
    probes = {task: probes.get(task, UNKNOWN_PROBE) for task in labelled}
    out = {name: v for name, v in metrics.items() if qualified_metric(name, probes) == name}
    for name, value in metrics.items():
        out.setdefault(qualified_metric(name, probes), value)
    return out


def starting_model(result: Mapping[str, Any]) -> str | None:
    """The `model.init` file of a result that evaluated a run's starting model (the step-0
    checkpoint of a `model.init` run, whose meta.json records the file: `init`), else None."""
    init = result.get("init")
    if int(result.get("step") or 0) != 0 or not isinstance(init, Mapping):
        return None
    return str(init.get("file") or init.get("path") or "?")


def make_result(
    source: dict[str, Any],
    provider: str,
    tasks: list[str],
    data: str,
    outcome: dict[str, Any],
    seconds: float,
    eval_settings: Any,
) -> dict[str, Any]:
    """One evaluation's record: what was evaluated (`source`: checkpoint or export, step), by
    which provider, on which tasks and data, the outcome of `evals.dispatch.run_tasks`, the
    wall time, and the eval settings used (`EvalConfig`, task sections nested) with the probe
    labels of the tasks that have one ("probes": {task: label}, `equirecon.eval_tasks`)."""
    return {
        **source,
        "provider": provider,
        "tasks": tasks,
        "data": str(data),
        **outcome,
        "seconds": round(seconds, 2),
        "eval": dataclasses.asdict(eval_settings),
        "probes": task_probes(tasks, eval_settings),
    }


def write_result(result: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write `result` to `out` atomically; returns it with `path` set.

    Raises:
        StorageError: the disk is full, read-only or not writable (no partial file is left);
            the metrics are logged first, so the evaluation's numbers are not lost.
    """
    try:
        write_json_atomic(out, result)
    except StorageError as err:
        log.error("eval results not written; metrics: %s", json.dumps(result.get("metrics")))
        err.update(
            what="eval results",
            then="rerun the eval (or give --out a path on another disk); the metrics are "
            "in the log line above",
        )
        raise
    result["path"] = str(out)
    return result
