"""Resuming a run directory with a new config: which changes are allowed, which refuse.

A checkpoint holds the model, the method's heads and centers, the optimizer state and the data
position of the config it was trained with. Resuming it under a config that changes any of those
would fail deep inside the checkpoint loader, or worse, load and train something else. So the
new config is compared with the saved one, key by key:

- allowed (accepted and logged): the keys of ALLOWED_ON_RESUME (how long to train, logging,
  checkpoint cadence and retention, tracking, the evaluations, how the same computation is
  parallelized or compiled, where the same shards live);
- `train.batch_size`: allowed when the global batch (per-rank batch x ranks) is unchanged, so a
  run resumes on another number of ranks;
- everything else refuses, with a table of the differences and the two ways out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from equirecon.config import (
    Config,
    ConfigError,
    flat_dict,
    flatten,
    load_config,
    rename_moved_keys,
)
from equirecon.errors import ResumeConfigError

# Keys a resumed run may change. A prefix ends with ".".
ALLOWED_ON_RESUME: tuple[str, ...] = (
    "run.",  # the directory itself (moved), the MLflow run name
    "tracking.",  # where metrics go
    "checkpoint.",  # cadence and retention
    "eval.",  # evaluation settings
    "train.max_steps",  # train longer or shorter (the schedules follow the new length)
    "train.log_every",
    "train.max_nonfinite_steps",
    "recon.log_images_every",
    # How the same computation runs: DCP checkpoints reshard between strategies and world sizes.
    "train.strategy",
    "train.zero_stage",
    "train.activation_checkpointing",
    "train.compile",
    "train.compile_backend",
    "train.precision",
    "model.attention",  # sdpa | math: the same attention
    "data.path",  # the same shards in another place
    "data.num_workers",  # the loader resumes at the next epoch when this changes
)


def is_allowed_on_resume(key: str) -> bool:
    return any(key.startswith(a) if a.endswith(".") else key == a for a in ALLOWED_ON_RESUME)


def load_saved_config(path: str | Path) -> dict[str, Any]:
    """The flat resolved config saved at `path` (older saves get today's meaning of new keys,
    and today's names of moved keys)."""
    try:
        return flat_dict(load_config(path))
    except ConfigError:  # a value today's checks reject: compare what was written
        return rename_moved_keys(flatten(yaml.safe_load(Path(path).read_text()) or {}), None)


def config_changes(
    saved: dict[str, Any],
    new: Config,
    saved_world_size: int | None = None,
    world_size: int | None = None,
) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(refused, allowed) changes: key -> (saved value, new value). `saved` may spell moved keys
    by their old names (`equirecon.config.MOVED_KEYS`): they compare with their new names."""
    saved = rename_moved_keys(saved, None)
    now = flat_dict(new)
    refused: dict[str, tuple[Any, Any]] = {}
    allowed: dict[str, tuple[Any, Any]] = {}
    for key, value in now.items():
        if key not in saved or _same(saved[key], value):
            continue
        if key == "train.batch_size" and saved_world_size and world_size:
            before, after = saved[key] * saved_world_size, value * world_size
            if before == after:
                allowed[key] = (saved[key], value)
            else:
                refused["train.batch_size x ranks (global batch)"] = (before, after)
            continue
        (allowed if is_allowed_on_resume(key) else refused)[key] = (saved[key], value)
    return refused, allowed


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _yaml(value: Any) -> str:
    """`value` as a key=value override on a command line would spell it."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"'{text}'" if " " in text else text


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """A table: key, saved value, new value."""
    rows = [("key", "saved", "now")] + [(k, repr(a), repr(b)) for k, (a, b) in changes.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def check_resume_config(
    saved: dict[str, Any],
    new: Config,
    run_dir: str | Path,
    saved_world_size: int | None = None,
    world_size: int | None = None,
) -> dict[str, tuple[Any, Any]]:
    """The allowed changes; raises ResumeConfigError listing the refused ones."""
    refused, allowed = config_changes(saved, new, saved_world_size, world_size)
    if refused:
        keep = " ".join(f"{k}={_yaml(a)}" for k, (a, _) in refused.items() if k in saved)
        raise ResumeConfigError(
            f"cannot resume {run_dir}: the config differs from the one its checkpoints were "
            f"trained with in keys that change the model, method, data order or optimizer "
            f"state:\n{format_changes(refused)}",
            hint=(
                "start a new run (run.dir=<new directory>), or resume with the saved config "
                f"(drop these overrides, or pass the saved values: {keep}; the saved config is "
                f"{Path(run_dir) / 'config.yaml'})"
            ),
        )
    return allowed
