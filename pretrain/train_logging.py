"""The trainer's logging glue: per-step metrics (losses all-reduced, schedule values, throughput,
MFU, memory, skipped data) to `metrics.jsonl` and MLflow, the reconstruction image grid, and the
derived values logged once (peak lr, global batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from equirecon.storage import guard_write
from pretrain.distributed import all_reduce_mean
from pretrain.meters import max_memory_gb
from pretrain.methods.base import StepOutput
from pretrain.param_groups import has_backbone_schedule


def save_recon_grid(out: StepOutput, path: Path) -> bool:
    """PNG grid, one column per image: u, v2 = g_θ(u), then u_k and û_k for each k."""
    if out.recon_inputs is None or not out.recon_preds:
        return False
    from torchvision.utils import make_grid, save_image

    from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rows = [out.recon_inputs, out.transformed]
    for target, pred in zip(out.recon_targets, out.recon_preds):
        rows += [target, pred]
    n = rows[0].shape[0]
    images = torch.cat([r.detach().float().cpu()[:n] for r in rows]) * std + mean
    save_image(make_grid(images.clamp(0, 1), nrow=n, padding=2, pad_value=1.0), str(path))
    return True


class LoggingMixin:
    """Metrics of a `pretrain.train.Trainer`: it provides `cfg`, `dist`, `device`, `run_dir`,
    `schedules`, `loader`, `step`, `last_grad_norm`, `metrics_file`, `tracker`,
    `flops_per_image`, `peak_flops` and `init_source`."""

    def resolved_params(self) -> dict[str, Any]:
        """Values derived from the config and the world size (logged as MLflow params)."""
        return {
            "resolved.global_batch": self.cfg.train.batch_size * self.dist.world_size,
            "resolved.peak_lr": self.schedules.lr,
            "resolved.lr_scaling": self.cfg.train.lr_scaling,
            # model.init: the file loaded and its SHA-256 (a fresh run only)
            **(self.init_source.params() if self.init_source is not None else {}),
        }

    def lr_summary(self) -> str:
        """One line: the peak lr and how it follows from train.base_lr and the global batch."""
        tr = self.cfg.train
        b = tr.batch_size * self.dist.world_size
        rule = {"linear": f"·{b}/256", "sqrt_1024": f"·sqrt({b}/1024)", "none": ""}
        backbone = ""
        if has_backbone_schedule(self.cfg):
            backbone = (
                f"; backbone frozen for {tr.freeze_backbone_steps} steps, then lr × "
                f"{tr.backbone_lr_scale:g} with a {tr.backbone_warmup_steps}-step warm-up"
            )
        return (
            f"peak lr {self.schedules.lr:.6g} = train.base_lr {tr.base_lr:g}"
            f"{rule.get(tr.lr_scaling, '')} (train.lr_scaling={tr.lr_scaling}, global batch {b}); "
            f"warm-up {tr.warmup_steps} steps, prototype layer frozen for "
            f"{tr.freeze_last_layer_steps or 0} steps{backbone}"
        )

    def _log_step(
        self,
        out: StepOutput,
        values: dict[str, float],
        step_time: float,
        t_data: float,
        global_batch: int,
    ) -> dict[str, float]:
        losses = [
            out.loss_total,
            out.loss_ssl,
            out.loss_recon if out.loss_recon is not None else out.loss_total * 0,
        ]
        losses += list(out.terms.values())
        reduced = all_reduce_mean(torch.stack([v.detach().float() for v in losses])).tolist()
        metrics = {
            "train/loss_total": reduced[0],
            "train/loss_ssl": reduced[1],
            **({"train/loss_recon": reduced[2]} if out.loss_recon is not None else {}),
            **{f"train/loss_{k}": v for k, v in zip(out.terms, reduced[3:])},
            "train/lr": values["lr"],
            # the backbone's own lr (before layer-wise decay) where it has its own schedule
            **(
                {"train/backbone_lr": values["backbone_lr"]}
                if has_backbone_schedule(self.cfg)
                else {}
            ),
            "train/weight_decay": values["weight_decay"],
            "train/momentum": values["momentum"],
            "train/teacher_temp": values["teacher_temp"],
            "train/img_per_s": global_batch / max(step_time, 1e-9),
            "train/data_wait_frac": min(t_data / max(step_time, 1e-9), 1.0),
        }
        if self.last_grad_norm is not None:
            metrics["train/grad_norm"] = self.last_grad_norm
        metrics["train/max_mem_gb"] = max_memory_gb(self.device)
        achieved = self.flops_per_image * global_batch / max(step_time, 1e-9)
        metrics["train/tflops"] = achieved / 1e12
        if self.peak_flops is not None:
            metrics["train/mfu"] = achieved / (self.peak_flops * self.dist.world_size)
        stats = getattr(self.loader, "stats", None)
        if stats is not None:
            skipped = stats() if callable(stats) else stats
            if isinstance(skipped, dict) and "skipped" in skipped:
                # samples lost (undecodable, in the damaged part of a shard ...) and shards
                # damaged or unreadable; data/skipped is their sum, as before (deprecated)
                metrics["data/skipped"] = float(skipped["skipped"])
                for key in ("skipped_samples", "skipped_shards"):
                    if key in skipped:
                        metrics[f"data/{key}"] = float(skipped[key])
        if self.dist.is_main:
            self.metrics_file.append(self.step, metrics)
            if self.tracker is not None:
                self.tracker.log_metrics(metrics, self.step)
        return metrics

    def _log_images(self, out: StepOutput) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / "recon_grid.png"
        with guard_write("the reconstruction images", path, partial=[path]):
            saved = save_recon_grid(out, path)
        if saved and self.tracker is not None:
            self.tracker.log_artifact(path, artifact_path=f"recon/step_{self.step:08d}")
