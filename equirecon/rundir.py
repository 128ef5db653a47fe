"""The layout of a run directory, and atomic file writes (no torch: every layer imports this).

    RUN_DIR/
      config.yaml                  the resolved config (equirecon.config.save_config)
      metrics.jsonl                training metrics (equirecon.tracking.MetricsFile)
      mlflow_run_id, mlflow_tracking_uri   the run's MLflow run (equirecon.tracking)
      checkpoints/step_XXXXXXXX/   one DCP checkpoint per step (pretrain.checkpoint)
      checkpoints/latest           names the newest complete checkpoint
      evals/step_XXXXXXXX.json     a checkpoint's eval results (evals.run)
      evals/step_XXXXXXXX.<tag>.json   one with other probe settings than the run config's
                                   (tag e.g. full-global: view, features; equirecon.eval_tasks)
      evals/floor_<name>.json      a floor's (raw pixels, random-init ViT); floor_<name>.<tag>.json

A file written with `write_text_atomic` goes to a temporary sibling first and is renamed over
the target, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from equirecon.errors import ConfigError
from equirecon.storage import guard_write

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"  # in CHECKPOINTS_DIR: the name of the newest complete checkpoint
EVALS_DIR = "evals"
STEP_RE = re.compile(r"^step_(\d{8})$")
STEP_FILE_RE = re.compile(r"^step_(\d{8})\.json$")
# A step's (a floor's) results file: the run's configured eval (group 2 None) or one with
# other probe settings (group 2 its tag, `equirecon.eval_tasks.probe_tag`).
_TAG = r"(?:\.([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*))?"
RESULT_FILE_RE = re.compile(rf"^step_(\d{{8}}){_TAG}\.json$")
FLOOR_FILE_RE = re.compile(rf"^floor_([A-Za-z0-9_]+){_TAG}\.json$")


# --- atomic writes ------------------------------------------------------------------------------


def temp_path(path: str | Path) -> Path:
    """The temporary sibling `write_text_atomic` writes `path` through (one per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` via a temporary file and a rename (readers never see half a file).

    Raises:
        StorageError: the disk is full, read-only or not writable (the temporary file is
            removed; `path` keeps its old content).
    """
    path = Path(path)
    tmp = temp_path(path)
    with guard_write(path.name, path, needed=len(text.encode()), partial=[tmp]):
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON (and a newline), atomically; creates the parent folders."""
    path = Path(path)
    with guard_write(path.name, path):
        path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


# --- checkpoints ----------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """(step, dir) of the complete checkpoints under `ckpt_root` (`RUN_DIR/checkpoints`), by step.

    Complete: named `step_XXXXXXXX` (a `.tmp_*` save in progress is not) and holding `.metadata`
    (DCP writes it last). `latest` is not needed: a crash can leave it stale or missing.
    """
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_RE.match(path.name)
        if match and path.is_dir() and (path / ".metadata").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_step(ckpt: str | Path) -> int:
    """The step of a checkpoint directory `step_XXXXXXXX`."""
    ckpt = Path(ckpt)
    m = STEP_RE.match(ckpt.name)
    if m is None:
        raise ConfigError(f"checkpoint directory {ckpt} is not named step_XXXXXXXX")
    return int(m.group(1))


# --- eval results ---------------------------------------------------------------------------


def step_result_path(run_dir: str | Path, step: int, tag: str | None = None) -> Path:
    """`evals/step_XXXXXXXX.json`, or with `tag` (another probe's, e.g. "full-global")
    `evals/step_XXXXXXXX.<tag>.json`."""
    suffix = f".{tag}" if tag else ""
    return Path(run_dir) / EVALS_DIR / f"step_{step:08d}{suffix}.json"


def floor_result_path(run_dir: str | Path, floor: str, tag: str | None = None) -> Path:
    """`evals/floor_<floor>.json`, or with `tag` `evals/floor_<floor>.<tag>.json`."""
    suffix = f".{tag}" if tag else ""
    return Path(run_dir) / EVALS_DIR / f"floor_{floor}{suffix}.json"
