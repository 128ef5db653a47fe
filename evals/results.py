"""The eval result files of a run directory (no torch: the watcher and reports import this).

`RUN_DIR/evals/step_XXXXXXXX.json` holds one checkpoint's evaluation (`metrics` named as in
DESIGN §5); `RUN_DIR/evals/floor_<name>.json` a floor's (raw pixels, random-init ViT).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

EVALS_DIR = "evals"
STEP_FILE_RE = re.compile(r"^step_(\d{8})\.json$")


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON via a temporary file and a rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def step_result_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / EVALS_DIR / f"step_{step:08d}.json"


def floor_result_path(run_dir: str | Path, floor: str) -> Path:
    return Path(run_dir) / EVALS_DIR / f"floor_{floor}.json"


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
