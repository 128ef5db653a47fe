"""The eval result files of a run directory (no torch: the watcher and reports import this).

`RUN_DIR/evals/step_XXXXXXXX.json` holds one checkpoint's evaluation (`metrics` named as in
DESIGN §5); `RUN_DIR/evals/floor_<name>.json` a floor's (raw pixels, random-init ViT). Their
paths are those of `equirecon.rundir` (the run-directory layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from equirecon.rundir import EVALS_DIR, STEP_FILE_RE


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
