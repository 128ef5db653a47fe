"""Evaluate one checkpoint: load the teacher backbone, run the tasks, write JSON and MLflow."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from equirecon.config import Config, load_config
from equirecon.tracking import log_to_existing_run
from pretrain.checkpoint import STEP_RE, Checkpointer
from pretrain.models.backbone import Backbone, backbone_kwargs, build_backbone

log = logging.getLogger("equirecon.eval")

TASKS = ("equivariance", "knn")


def checkpoint_config(ckpt: Path) -> Config:
    """The resolved config saved with a checkpoint (or its run directory)."""
    for candidate in (ckpt / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate)
    raise FileNotFoundError(f"no config.yaml in {ckpt} or its run directory {ckpt.parent.parent}")


def load_teacher_backbone(ckpt: str | Path, cfg: Config | None = None) -> tuple[Backbone, Config]:
    """Build the backbone of the checkpoint's config and load the teacher's weights into it."""
    ckpt = Path(ckpt)
    if not (ckpt / ".metadata").is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete DCP checkpoint (no .metadata)")
    cfg = cfg or checkpoint_config(ckpt)
    kwargs = backbone_kwargs(cfg.model, cfg.data.global_size)
    kwargs["drop_path"] = 0.0
    backbone = build_backbone(**kwargs)
    from pretrain.methods import get_method

    # The representation of DESIGN §1.5: the teacher backbone where the method has an EMA
    # teacher (DINOv2, iBOT), else the (shared) student encoder's backbone (VICReg, SimCLR).
    key = "teacher" if getattr(get_method(cfg.method.name), "has_teacher", True) else "student"
    prefix = "encoder.backbone."
    state = {key: {prefix + k: v for k, v in backbone.state_dict().items()}}
    Checkpointer(ckpt.parent.parent).load(ckpt, state, partial=True)
    backbone.load_state_dict({k[len(prefix) :]: v for k, v in state[key].items()})
    return backbone.eval(), cfg


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from `step_X`, `checkpoints/latest` or a `checkpoints` folder."""
    path = Path(path)
    if path.name == "latest" or (path / "latest").is_file():
        from pretrain.checkpoint import latest_checkpoint

        root = path.parent if path.name == "latest" else path
        found = latest_checkpoint(root)
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint under {root}")
        return found
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint directory (no .metadata)")
    return path


def checkpoint_step(ckpt: Path) -> int:
    m = STEP_RE.match(ckpt.name)
    if m is None:
        raise ValueError(f"checkpoint directory {ckpt} is not named step_XXXXXXXX")
    return int(m.group(1))


def run_tasks(
    backbone: torch.nn.Module,
    cfg: Config,
    tasks: list[str],
    data: str,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Run `tasks` on a frozen backbone; returns metrics named as in DESIGN §5."""
    from data_pipeline.reader import load_images
    from data_pipeline.transforms import build_transform
    from evals.equivariance import equivariance_r2
    from evals.features import backbone_feature_fn, extract_features
    from evals.knn import knn_classify

    e = cfg.eval
    size = e.img_size or cfg.data.global_size
    backbone = backbone.to(device)
    feature_fn = backbone_feature_fn(backbone, num_prefix_tokens=backbone.num_prefix_tokens)
    metrics: dict[str, float] = {}
    for task in tasks:
        t0 = time.perf_counter()
        if task == "equivariance":
            train_x, _ = load_images(
                data, "natural", "train", size, with_labels=False, max_images=e.max_train_images
            )
            test_x, _ = load_images(
                data, "natural", "val", size, with_labels=False, max_images=e.max_test_images
            )
            for name in [t.strip() for t in e.equivariance_transforms.split(",") if t.strip()]:
                res = equivariance_r2(
                    feature_fn,
                    train_x,
                    test_x,
                    build_transform(name, size),
                    seed=cfg.train.seed,
                    epochs=e.r2_epochs,
                    device=device,
                    progress=progress,
                )
                metrics[f"eval/equivariance/{name}_r2"] = float(res["r2"])
        elif task == "knn":
            train_x, train_y = load_images(data, "labelled", "train", size, with_labels=True)
            test_x, test_y = load_images(data, "labelled", "val", size, with_labels=True)
            desc = "knn features" if progress else None
            f_train = extract_features(feature_fn, train_x, device=device, progress=desc)
            f_test = extract_features(feature_fn, test_x, device=device, progress=desc)
            res = knn_classify(f_train, train_y, f_test, test_y, k=e.knn_k)
            metrics["eval/knn/top1"] = float(res["top1"])
        else:
            raise ValueError(f"unknown eval task {task!r}; available: {', '.join(TASKS)}")
        log.info("eval %s done in %.1fs", task, time.perf_counter() - t0)
    return metrics


def evaluate_checkpoint(
    ckpt: str | Path,
    tasks: list[str] | None = None,
    data: str | None = None,
    overrides: list[str] | None = None,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Evaluate `ckpt` (a `RUN_DIR/checkpoints/step_X` directory) and record the results.

    Writes `RUN_DIR/evals/step_X.json` and logs the metrics into the run's MLflow run at the
    checkpoint's step.
    """
    ckpt = resolve_checkpoint(ckpt)
    cfg = checkpoint_config(ckpt)
    if overrides:
        from equirecon.config import _set, parse_overrides

        for k, v in parse_overrides(overrides).items():
            _set(cfg, k, v)
    tasks = tasks or [t.strip() for t in cfg.eval.tasks.split(",") if t.strip()]
    data = data or cfg.eval.data or cfg.data.path
    backbone, cfg = load_teacher_backbone(ckpt, cfg)
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    metrics = run_tasks(backbone, cfg, tasks, data)
    step = checkpoint_step(ckpt)
    run_dir = ckpt.parent.parent
    result = {
        "checkpoint": str(ckpt),
        "step": step,
        "tasks": tasks,
        "data": str(data),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out_dir = run_dir / "evals"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"step_{step:08d}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    if log_mlflow and cfg.tracking.enabled:
        result["mlflow_run_id"] = log_to_existing_run(run_dir, metrics, step, cfg.tracking.uri)
    return result
