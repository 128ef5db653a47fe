"""Evaluate a frozen backbone: a checkpoint, an exported model or a floor, on every task family.

Tasks (metric names as in DESIGN §5):
- equivariance: `eval/equivariance/<transform>_r2` (evals/equivariance.py)
- knn: `eval/knn/top1` (evals/knn.py)
- linear: `eval/linear/top1` (evals/linear.py)
- homography: `eval/homography/mce` (evals/homography.py)
- segmentation: `eval/segmentation/miou` (evals/segmentation.py)
- depth: `eval/depth/rmse`, `eval/depth/abs_rel`, `eval/depth/delta1` (evals/depth.py)

A checkpoint's results go to `RUN_DIR/evals/step_XXXXXXXX.json` and into the run's MLflow run at
the checkpoint's step; a floor's to `RUN_DIR/evals/floor_<name>.json` (files only).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from equirecon.config import Config, EvalConfig, apply_overrides, load_config
from equirecon.errors import ConfigError
from equirecon.rundir import (
    checkpoint_step,
    floor_result_path,
    step_result_path,
    write_json_atomic,
)
from equirecon.tracking import log_to_existing_run
from evals.providers import FLOORS, FeatureProvider, build_provider
from pretrain.export import CONFIG, load_exported_backbone

# Checkpoint loading lives in pretrain.restore (export needs it too); these names stay
# importable from here.
from pretrain.restore import (
    checkpoint_config,
    load_teacher_backbone,
    load_teacher_encoder,
    resolve_checkpoint,
)

log = logging.getLogger("equirecon.eval")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# --- tasks ------------------------------------------------------------------------------------


@dataclass
class EvalContext:
    """What every task needs: settings, data root, image side, device, and a per-run cache."""

    cfg: EvalConfig
    data: str
    img_size: int
    device: torch.device | str = "cpu"
    progress: bool = False
    cache: dict[Any, Any] = field(default_factory=dict)

    def images(
        self, subset: str, split: str, size: int, limit: int, labels: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`data_pipeline.reader.load_images` (limit 0: all), cached for the context's lifetime."""
        key = ("images", subset, split, size, limit, labels)
        if key not in self.cache:
            from data_pipeline.reader import load_images

            self.cache[key] = load_images(
                self.data, subset, split, size, with_labels=labels, max_images=limit or None
            )
        return self.cache[key]


TaskResult = tuple[dict[str, float], dict[str, Any]]
"""(metrics named as in DESIGN §5, details for the JSON file)."""


def _task_equivariance(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from data_pipeline.transforms import build_transform
    from evals.equivariance import ProbeView, equivariance_r2

    e, size = ctx.cfg, ctx.img_size
    metrics, details = {}, {}
    for name in _split(e.equivariance_transforms):
        transform = build_transform(name, size)
        source = ProbeView(transform, e.equivariance_view, size).source_size
        train_x, _ = ctx.images("natural", "train", source, e.max_train_images)
        test_x, _ = ctx.images("natural", "val", source, e.max_test_images)
        res = equivariance_r2(
            provider.equivariance_fn(e.equivariance_features, e.equivariance_grid),
            train_x,
            test_x,
            transform,
            seed=e.seed,
            epochs=e.r2_epochs,
            hidden=e.r2_hidden,
            batch_size=e.batch_size,
            views_per_image=e.r2_views,
            device=ctx.device,
            progress=ctx.progress,
            view=e.equivariance_view,
            repeats=e.r2_repeats,
        )
        metrics[f"eval/equivariance/{name}_r2"] = float(res["r2"])
        if e.r2_repeats > 1:
            metrics[f"eval/equivariance/{name}_r2_std"] = float(res["r2_std"])
        details[name] = {
            **res,
            "features": e.equivariance_features,
            "grid": e.equivariance_grid if e.equivariance_features == "grid" else None,
        }
    return metrics, details


def _labelled_features(provider: FeatureProvider, ctx: EvalContext) -> tuple[torch.Tensor, ...]:
    """(train feats, train labels, test feats, test labels), shared by kNN and the linear probe.

    Images are decoded and passed through the model batch by batch (only features are kept),
    so the labelled set may be far larger than memory (ImageNet with `*_images: 0`).
    """
    key = ("labelled_features", id(provider))
    if key not in ctx.cache:
        from data_pipeline.reader import iter_images
        from evals.features import extract_features

        e = ctx.cfg
        out: list[torch.Tensor] = []
        for split, limit in (("train", e.labelled_train_images), ("val", e.labelled_test_images)):
            batches = iter_images(
                ctx.data, "labelled", split, ctx.img_size, True, limit or None, e.batch_size
            )
            if ctx.progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"labelled {split} features", unit="batch")
            feats, labels = [], []
            for images, y in batches:
                feats.append(
                    extract_features(provider.global_features, images, e.batch_size, ctx.device)
                )
                labels.append(y)
            out += [torch.cat(feats), torch.cat(labels)]
        ctx.cache[key] = tuple(out)
    return ctx.cache[key]


def _task_knn(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.knn import knn_classify

    f_train, y_train, f_test, y_test = _labelled_features(provider, ctx)
    res = knn_classify(f_train, y_train, f_test, y_test, k=ctx.cfg.knn_k)
    return {"eval/knn/top1": float(res["top1"])}, res


def _task_linear(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.linear import linear_probe

    e = ctx.cfg
    f_train, y_train, f_test, y_test = _labelled_features(provider, ctx)
    res = linear_probe(
        f_train,
        y_train,
        f_test,
        y_test,
        lrs=tuple(float(v) for v in _split(e.linear_lrs)),
        epochs=e.linear_epochs,
        val_fraction=e.linear_val_fraction,
        seed=e.seed,
        device=ctx.device,
    )
    return {"eval/linear/top1": float(res["top1"])}, res


def _task_homography(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.homography import homography_mce

    e, size = ctx.cfg, ctx.img_size
    rho = e.homography_rho * size
    source = size + 2 * math.ceil(rho)
    train_x, _ = ctx.images("natural", "train", source, e.homography_train_images)
    test_x, _ = ctx.images("natural", "val", source, e.homography_test_images)
    res = homography_mce(
        provider,
        train_x,
        test_x,
        patch_px=size,
        rho=rho,
        train_views=e.homography_views,
        epochs=e.homography_epochs,
        channels=e.homography_channels,
        lr=e.homography_lr,
        seed=e.seed,
        device=ctx.device,
    )
    return {"eval/homography/mce": float(res["mce"])}, res


def _task_segmentation(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.segmentation import load_segmentation, segmentation_classes, segmentation_miou

    e, size = ctx.cfg, ctx.img_size
    train_x, train_y = load_segmentation(
        ctx.data, "train", size, e.segmentation_train_images or None
    )
    test_x, test_y = load_segmentation(ctx.data, "val", size, e.segmentation_test_images or None)
    classes = segmentation_classes(ctx.data)
    res = segmentation_miou(
        provider,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=len(classes) if classes else None,
        epochs=e.segmentation_epochs,
        lr=e.segmentation_lr,
        seed=e.seed,
        device=ctx.device,
    )
    if classes:
        res["classes"] = classes
    return {"eval/segmentation/miou": float(res["miou"])}, res


def _task_depth(provider: FeatureProvider, ctx: EvalContext) -> TaskResult:
    from evals.depth import depth_linear, depth_settings, load_depth

    e, size = ctx.cfg, ctx.img_size
    train_x, train_y = load_depth(ctx.data, "train", size, e.depth_train_images or None)
    test_x, test_y = load_depth(ctx.data, "val", size, e.depth_test_images or None)
    settings = depth_settings(ctx.data)
    res = depth_linear(
        provider,
        train_x,
        train_y,
        test_x,
        test_y,
        epochs=e.depth_epochs,
        lr=e.depth_lr,
        min_depth_m=settings["min_depth_m"],
        max_depth_m=settings["max_depth_m"],
        seed=e.seed,
        device=ctx.device,
    )
    metrics = {f"eval/depth/{name}": float(res[name]) for name in ("rmse", "abs_rel", "delta1")}
    return metrics, {**res, **settings}


TASKS: dict[str, Callable[[FeatureProvider, EvalContext], TaskResult]] = {
    "equivariance": _task_equivariance,
    "knn": _task_knn,
    "linear": _task_linear,
    "homography": _task_homography,
    "segmentation": _task_segmentation,
    "depth": _task_depth,
}


def parse_tasks(text: str | list[str] | None, default: str) -> list[str]:
    """Task names from "a,b" (or "all"); unknown names are errors listing the valid ones."""
    items = _split(text) if isinstance(text, str) else list(text or [])
    tasks = items or _split(default)
    if tasks == ["all"]:
        return list(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown eval task(s) {unknown}; available: {', '.join(TASKS)} or all")
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
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(eval_cfg.seed)
            task_metrics, details[task] = TASKS[task](provider, ctx)
        metrics.update(task_metrics)
        seconds[task] = round(time.perf_counter() - t0, 2)
        log.info("eval %s (%s) done in %.1fs: %s", task, provider.name, seconds[task], task_metrics)
    return {"metrics": metrics, "details": _jsonable(details), "task_seconds": seconds}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


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


def _result(
    source: dict[str, Any], provider: FeatureProvider, tasks: list[str], data: str, out: dict
) -> dict[str, Any]:
    return {
        **source,
        "provider": provider.name,
        "tasks": tasks,
        "data": str(data),
        **out,
    }


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
        out: the results JSON; None: `RUN_DIR/evals/step_XXXXXXXX.json` (or the floor file).
        device: "cpu", "cuda", ...; None: CUDA when available.
        config: a YAML config whose eval section replaces the checkpoint's.
        progress: show progress bars.

    Returns:
        The result written to the JSON file ("metrics", "task_seconds", "details", ...).
    """
    ckpt = resolve_checkpoint(ckpt)
    cfg = checkpoint_config(ckpt)
    cfg.eval = _apply_eval_settings(cfg.eval, config, overrides)
    e = cfg.eval
    task_list = parse_tasks(tasks, e.tasks)
    data = data or e.data or cfg.data.path
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
        provider, e, task_list, data, e.img_size or cfg.data.global_size,
        device or _default_device(), progress,
    )  # fmt: skip
    result = _result(
        {"checkpoint": str(ckpt), "step": step, "source": "checkpoint"},
        provider,
        task_list,
        data,
        {**outcome, "seconds": round(time.perf_counter() - t0, 2), "eval": dataclasses.asdict(e)},
    )
    if out is None:
        out = floor_result_path(run_dir, floor) if floor else step_result_path(run_dir, step)
    write_json_atomic(out, result)
    result["path"] = str(out)
    if log_mlflow and floor is None and cfg.tracking.enabled:
        finite = {k: v for k, v in outcome["metrics"].items() if math.isfinite(v)}
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
    backbone = load_exported_backbone(export_dir)
    meta = json.loads((export_dir / CONFIG).read_text())
    provider = build_provider(
        backbone, floor, seed=e.seed, pooling=e.pooling, feature_layers=e.feature_layers
    )
    t0 = time.perf_counter()
    outcome = run_tasks(
        provider, e, task_list, data, e.img_size or int(meta["model_args"]["img_size"]),
        device or _default_device(), progress,
    )  # fmt: skip
    result = _result(
        {
            "export": str(export_dir),
            "step": meta.get("equirecon", {}).get("step"),
            "source": "export",
        },
        provider,
        task_list,
        data,
        {**outcome, "seconds": round(time.perf_counter() - t0, 2), "eval": dataclasses.asdict(e)},
    )
    if out is not None:
        write_json_atomic(out, result)
        result["path"] = str(out)
    return result


__all__ = [
    "FLOORS",
    "TASKS",
    "EvalContext",
    "checkpoint_config",
    "checkpoint_step",
    "evaluate_checkpoint",
    "evaluate_export",
    "load_teacher_backbone",
    "load_teacher_encoder",
    "parse_tasks",
    "resolve_checkpoint",
    "run_tasks",
]
