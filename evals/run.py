"""Evaluate a frozen backbone: a checkpoint, an exported model or a floor, on every task family.

This module sets an evaluation up: the eval settings (the checkpoint's config, `--config`,
`eval.*` overrides), the model (`pretrain.restore` / `pretrain.export`) and its feature provider
(`evals.providers`); then `evals.dispatch.run_tasks` runs the tasks, each a module of
`evals.tasks` (metric names as in DESIGN §5: `eval/knn/top1`, ...), and `evals.results` makes
and writes the record.

Partial data. Before the model is loaded, `evals.dispatch.plan_tasks` leaves out the tasks whose
subset the dataset root lacks (recorded under "skipped", with the reason); a task named in
`tasks` whose data is missing is an error instead. A task that fails is recorded under "failed"
({task: error}); the others' results are still written (and logged to MLflow).

A checkpoint's results go to `RUN_DIR/evals/step_XXXXXXXX.json` and into the run's MLflow run at
the checkpoint's step (a `model.init` run's step 0 is its starting model: the loaded backbone,
saved by the trainer before the first update; its result names the file, `init`); a floor's to
`RUN_DIR/evals/floor_<name>.json` (files only).

Probe settings (`equirecon.eval_tasks`). The metrics of a task with a probe carry its label in
their names as well (equivariance: `eval/equivariance/<view>/<features>/<transform>_r2`). An eval
whose probe label differs from the run config's (another `eval.equivariance.view`, `.features` or
`.grid`, by overrides or `--config`) is written to `step_XXXXXXXX.<tag>.json`
(`floor_<name>.<tag>.json`; tag e.g. `full-global`), never over the run's own file, and logs
to MLflow only the qualified names of that task: the interface names of the run's MLflow record
(`eval/equivariance/<transform>_r2`) stay those of its configured probe. The results file holds
both names either way.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from equirecon.config import Config, EvalConfig, apply_overrides, load_config
from equirecon.errors import ConfigError
from equirecon.eval_tasks import is_unqualified_metric, probe_tag, task_probes
from equirecon.rundir import checkpoint_step, floor_result_path, step_result_path
from equirecon.tracking import log_to_existing_run
from evals.dispatch import explicit_tasks, parse_tasks, plan_tasks, run_tasks
from evals.providers import FLOORS, build_provider
from evals.results import make_result, write_result
from evals.tasks import EvalContext
from pretrain.checkpoint import read_meta
from pretrain.export import CONFIG, load_exported_backbone

# Checkpoint loading lives in pretrain.restore (export needs it too); these names stay
# importable from here.
from pretrain.restore import (
    checkpoint_config,
    load_teacher_backbone,
    load_teacher_encoder,
    resolve_checkpoint,
)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _apply_eval_settings(
    cfg_eval: EvalConfig, config: str | Path | None, overrides: list[str] | None
) -> EvalConfig:
    """`cfg_eval`, its fields replaced by the eval section of `config` (a YAML config file) and
    then by `eval.*` overrides."""
    if config is not None:
        cfg_eval = load_config(config).eval
    if overrides:
        bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("eval.")]
        if bad:
            raise ConfigError(f"eval accepts only eval.* overrides, got {bad}")
        holder = Config(eval=copy.deepcopy(cfg_eval))
        apply_overrides(holder, overrides)
        cfg_eval = holder.eval
    return cfg_eval


def evaluate_checkpoint(
    ckpt: str | Path,
    tasks: list[str] | str | None = None,
    data: str | None = None,
    overrides: list[str] | None = None,
    log_mlflow: bool = True,
    floor: str | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    config: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `ckpt` (`RUN_DIR/checkpoints/step_X`, or `.../latest`) and record the results.

    Args:
        ckpt: the checkpoint.
        tasks: task names (list or "a,b"); None: `eval.tasks` of the checkpoint's config.
        data: dataset root; None: `eval.data`, else `data.path` of the checkpoint's config.
        overrides: `eval.*=value` overrides.
        log_mlflow: log the metrics into the run's MLflow run at the checkpoint's step.
        floor: None (the checkpoint's teacher backbone), "pixels" or "random" (a random-init
            ViT of the same shape); floors are written to `evals/floor_<name>.json` only.
        out: the results JSON; None: `RUN_DIR/evals/step_XXXXXXXX.json` (or the floor file),
            `step_XXXXXXXX.<tag>.json` where a task's probe is not the run config's (see the
            module docstring).
        device: "cpu", "cuda", ...; None: CUDA when available.
        config: a YAML config whose eval section replaces the checkpoint's.
        progress: show progress bars.

    Returns:
        The result written to the JSON file ("metrics", "task_seconds", "details", "skipped"
        and "failed" ({task: why}), ...).

    Raises:
        MissingPathError: a task named in `tasks` lacks its data (with the default task list,
            such tasks are skipped); DataError: no task has its data.
    """
    ckpt = resolve_checkpoint(ckpt)
    cfg = checkpoint_config(ckpt)
    run_eval = cfg.eval  # the run's configured eval settings
    cfg.eval = _apply_eval_settings(cfg.eval, config, overrides)
    e = cfg.eval
    task_list = parse_tasks(tasks, e.tasks)
    data = data or e.data or cfg.data.path
    to_run, skipped = plan_tasks(task_list, data, explicit_tasks(tasks), e)
    configured = task_probes(to_run, run_eval)
    other_probes = {t: p for t, p in task_probes(to_run, e).items() if p != configured.get(t)}
    backbone, split_head, cfg = load_teacher_encoder(ckpt, cfg)
    provider = build_provider(
        backbone,
        floor,
        seed=e.seed,
        pooling=e.pooling,
        split_head=split_head,
        feature_layers=e.feature_layers,
    )
    step = checkpoint_step(ckpt)
    run_dir = ckpt.parent.parent
    t0 = time.perf_counter()
    outcome = run_tasks(
        provider, e, to_run, data, e.img_size or cfg.data.global_size,
        device or _default_device(), progress,
    )  # fmt: skip
    outcome["skipped"] = skipped
    source: dict[str, Any] = {"checkpoint": str(ckpt), "step": step, "source": "checkpoint"}
    init = read_meta(ckpt).get("init")
    if init:  # a model.init run: the file it started from (step 0 is that starting model)
        source["init"] = init
    result = make_result(
        source,
        provider.name,
        task_list,
        data,
        outcome,
        time.perf_counter() - t0,
        e,
    )
    if out is None:
        tag = probe_tag(other_probes) if other_probes else None
        if floor:
            out = floor_result_path(run_dir, floor, tag)
        else:
            out = step_result_path(run_dir, step, tag)
    write_result(result, out)
    if log_mlflow and floor is None and cfg.tracking.enabled:
        finite = {
            k: v
            for k, v in outcome["metrics"].items()
            if math.isfinite(v) and not is_unqualified_metric(k, other_probes)
        }
        result["mlflow_run_id"] = log_to_existing_run(run_dir, finite, step, cfg.tracking.uri)
    return result


def evaluate_export(
    export_dir: str | Path,
    data: str,
    tasks: list[str] | str | None = None,
    overrides: list[str] | None = None,
    floor: str | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    config: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate an `equirecon export` directory (config.json + model.safetensors).

    There is no training config: eval settings are the defaults, then `config`'s eval section,
    then `overrides`; the image side is the export's `img_size` unless `eval.img_size` is set.
    The result is returned and, with `out`, written there as JSON.
    """
    export_dir = Path(export_dir)
    e = _apply_eval_settings(EvalConfig(), config, overrides)
    task_list = parse_tasks(tasks, e.tasks)
    to_run, skipped = plan_tasks(task_list, data, explicit_tasks(tasks), e)
    backbone = load_exported_backbone(export_dir)
    meta = json.loads((export_dir / CONFIG).read_text())
    provider = build_provider(
        backbone, floor, seed=e.seed, pooling=e.pooling, feature_layers=e.feature_layers
    )
    t0 = time.perf_counter()
    outcome = run_tasks(
        provider, e, to_run, data, e.img_size or int(meta["model_args"]["img_size"]),
        device or _default_device(), progress,
    )  # fmt: skip
    outcome["skipped"] = skipped
    result = make_result(
        {
            "export": str(export_dir),
            "step": meta.get("equirecon", {}).get("step"),
            "source": "export",
        },
        provider.name,
        task_list,
        data,
        outcome,
        time.perf_counter() - t0,
        e,
    )
    if out is not None:
        write_result(result, out)
    return result


__all__ = [
    "FLOORS",
    "EvalContext",
    "checkpoint_config",
    "checkpoint_step",
    "evaluate_checkpoint",
    "evaluate_export",
    "load_teacher_backbone",
    "load_teacher_encoder",
    "parse_tasks",
    "plan_tasks",
    "resolve_checkpoint",
    "run_tasks",
]
