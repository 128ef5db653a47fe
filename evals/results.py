"""The eval result files of a run directory (no torch: the watcher and reports import this):
reading them back, and making and writing one evaluation's record.

`RUN_DIR/evals/step_XXXXXXXX.json` holds one checkpoint's evaluation (`metrics` named as in
DESIGN §5); `RUN_DIR/evals/floor_<name>.json` a floor's (raw pixels, random-init ViT). Their
paths are those of `equirecon.rundir` (the run-directory layout).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from equirecon.errors import StorageError
from equirecon.rundir import EVALS_DIR, STEP_FILE_RE, write_json_atomic

log = logging.getLogger(__name__)


def read_step_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every `evals/step_*.json` of a run, sorted by step (unreadable files are skipped)."""
    folder = Path(run_dir) / EVALS_DIR
    results = []
    for path in sorted(folder.glob("step_*.json")) if folder.is_dir() else []:
        match = STEP_FILE_RE.match(path.name)
        if not match:
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        result.setdefault("step", int(match.group(1)))
        results.append(result)
    return sorted(results, key=lambda r: int(r["step"]))


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
    wall time, and the eval settings used (`EvalConfig`, task sections nested)."""
    return {
        **source,
        "provider": provider,
        "tasks": tasks,
        "data": str(data),
        **outcome,
        "seconds": round(seconds, 2),
        "eval": dataclasses.asdict(eval_settings),
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
