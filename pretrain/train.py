"""The pretraining loop: one process, or one rank of a torchrun/Slurm world (DDP)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from equirecon.config import Config, flat_dict, save_config, to_dict
from equirecon.tracking import MetricsFile, Tracker
from launch.distributed import DistInfo, all_reduce_mean, all_reduce_min, barrier, init_distributed
from pretrain.checkpoint import Checkpointer, latest_checkpoint
from pretrain.meters import device_peak_flops, max_memory_gb, ssl_step_flops
from pretrain.methods import build_method
from pretrain.methods.base import SSLMethod, StepOutput
from pretrain.schedules import build_schedules

log = logging.getLogger("equirecon.pretrain")


def build_optimizer(student: nn.Module) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not on biases, norms, tokens, prototypes' gains)."""
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("token", "pos_embed")) else decay).append(p)
    groups = [
        {"params": decay, "apply_wd": True},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))


def build_loader(cfg: Config, dist_info: DistInfo, patch_size: int):  # noqa: ANN201
    """The training reader of `data.backend` (yields `Batch` on the CPU)."""
    if cfg.data.backend == "dali":
        from data_pipeline.dali_reader import build_dali_loader  # optional: nvidia-dali

        return build_dali_loader(cfg, dist_info, patch_size)
    from data_pipeline.reader import build_train_loader, multicrop_kwargs

    return build_train_loader(
        cfg.data.path,
        num_workers=cfg.data.num_workers,
        pin_memory=dist_info.device.type == "cuda",
        augmentations=cfg.data.augmentations,
        **multicrop_kwargs(cfg, dist_info.rank, dist_info.world_size, patch_size),
    )


def _loss_terms(out: StepOutput) -> dict[str, float]:
    terms = {"loss_total": out.loss_total, "loss_ssl": out.loss_ssl, **out.terms}
    if out.loss_recon is not None:
        terms["loss_recon"] = out.loss_recon
    return {k: float(v.detach()) for k, v in terms.items()}


def batch_statistics(batch) -> dict[str, Any]:  # noqa: ANN001 - Batch
    """Min/max/mean/std of every tensor of a batch, and masked-patch counts (for diagnostics)."""
    stats: dict[str, Any] = {}
    for name in ("global_crops", "local_crops"):
        t = getattr(batch, name).detach().float()
        if t.numel():
            stats[name] = {
                "shape": list(t.shape),
                "min": float(t.min()),
                "max": float(t.max()),
                "mean": float(t.mean()),
                "std": float(t.std()),
                "finite": bool(torch.isfinite(t).all()),
            }
    stats["masked_patches"] = int(batch.masks.sum())
    return stats


def transform_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """θ of step `step` on rank `rank`: a pure function of (seed, rank, step), so resumes match."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7919 + step) % (2**63))


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


class Trainer:
    """Owns the method, optimizer, loader, checkpoints and tracking of one run."""

    def __init__(self, cfg: Config, dist_info: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist_info or init_distributed()
        self.device = self.dist.device
        self.run_dir = Path(cfg.run.dir)
        torch.manual_seed(cfg.train.seed + self.dist.rank)

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        barrier()

        self.method: SSLMethod = build_method(cfg).to(self.device)
        self.student_fn: nn.Module = self.method.student
        if cfg.train.strategy == "ddp" or (
            cfg.train.strategy == "single" and self.dist.distributed
        ):
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_fn = DDP(self.method.student, device_ids=ids)
        elif cfg.train.strategy in ("fsdp2", "deepspeed"):
            raise NotImplementedError(
                f"train.strategy={cfg.train.strategy} is not available yet (see the distributed-engine "
                "issue); use single or ddp"
            )
        self.optimizer = build_optimizer(self.method.student)
        self.schedules = build_schedules(cfg, self.dist.world_size)
        self.checkpointer = Checkpointer(self.run_dir, keep=cfg.checkpoint.keep)
        backbone = self.method.backbone
        self.loader = build_loader(cfg, self.dist, backbone.patch_size)
        self.step = 0
        self.last_skip: dict[str, Any] | None = None
        self.consecutive_skips = 0
        self.skipped_steps = 0
        self.tracker: Tracker | None = None
        self.metrics_file = MetricsFile(self.run_dir / "metrics.jsonl")
        self.flops_per_image = ssl_step_flops(
            backbone.embed_dim,
            len(backbone.blocks),
            backbone.patch_size,
            cfg.data.global_size,
            cfg.data.local_size,
            cfg.data.n_local,
            backbone.num_prefix_tokens,
        )
        self.peak_flops = device_peak_flops(self.device)

    # ---- checkpoint state -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "student": self.method.student.state_dict(),
            "teacher": self.method.teacher.state_dict() if self.method.teacher is not None else {},
            "optimizer": get_optimizer_state_dict(self.method.student, self.optimizer),
            # Values that differ per rank live under a rank-specific key (DCP keeps each).
            f"rank{self.dist.rank}": {
                "torch_rng": torch.get_rng_state(),
                "data": json.dumps(self.loader.state_dict()),
            },
            "trainer": {"step": torch.tensor(self.step)},
        }

    def save_checkpoint(self) -> Path:
        meta = {"world_size": self.dist.world_size, "arch": self.cfg.model.arch}
        if self.tracker is not None and self.tracker.run_id:
            meta["mlflow_run_id"] = self.tracker.run_id
        import yaml

        path = self.checkpointer.save(
            self.step, self._state(), yaml.safe_dump(to_dict(self.cfg), sort_keys=False), meta
        )
        return path

    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            return False
        state = self._state()
        self.checkpointer.load(path, state)
        self.method.student.load_state_dict(state["student"])
        if self.method.teacher is not None:
            self.method.teacher.load_state_dict(state["teacher"])
        set_optimizer_state_dict(self.method.student, self.optimizer, state["optimizer"])
        own = state[f"rank{self.dist.rank}"]
        torch.set_rng_state(own["torch_rng"])
        self.loader.load_state_dict(json.loads(own["data"]))
        self.step = int(state["trainer"]["step"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return True

    # ---- the loop -----------------------------------------------------------------------------
    def _apply_schedules(self, values: dict[str, float]) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = values["lr"]
            if group["apply_wd"]:
                group["weight_decay"] = values["weight_decay"]

    def train_step(self, batch, values: dict[str, float]) -> StepOutput:  # noqa: ANN001 - Batch
        """One update. A non-finite loss or gradient skips the update (all ranks agree) and
        sets `self.last_skip` to a description of the offending terms."""
        cfg = self.cfg
        self._apply_schedules(values)
        gen = transform_generator(cfg.train.seed, self.dist.rank, self.step)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.train.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.method.compute_losses(self.student_fn, batch, values["teacher_temp"], gen)
        self.optimizer.zero_grad(set_to_none=True)
        self.last_skip = None
        # One flag for all ranks (a skipped step must be skipped everywhere, or DDP deadlocks).
        finite = all_reduce_min(torch.isfinite(out.loss_total.detach()).float())
        if finite.item() < 1:
            self.last_skip = {"reason": "non-finite loss", **_loss_terms(out)}
            return out
        out.loss_total.backward()
        params = [p for p in self.method.student.parameters() if p.grad is not None]
        max_norm = cfg.train.clip_grad if cfg.train.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.last_skip = {
                "reason": "non-finite gradient",
                "grad_norm": float(grad_norm),
                **_loss_terms(out),
            }
            return out
        self.optimizer.step()
        self.method.update_teacher(values["momentum"])
        return out

    def fit(self, stop_after: int | None = None) -> dict[str, float]:
        """Train to `train.max_steps` (resuming from `checkpoints/latest` if present).

        `stop_after`: checkpoint and return once this many steps are done (preemption drill);
        the schedules still follow `train.max_steps`, so a later `fit()` continues exactly.
        """
        cfg = self.cfg
        resumed = self.maybe_resume()
        if self.dist.is_main:
            self.tracker = Tracker(
                self.run_dir,
                cfg.tracking.uri,
                cfg.tracking.experiment,
                cfg.run.name,
                cfg.tracking.enabled,
            )
            self.tracker.log_params(flat_dict(cfg))
            self.tracker.log_artifact(self.run_dir / "config.yaml")
            if resumed:
                self.metrics_file.truncate_after(self.step)
        total = cfg.train.max_steps
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="pretrain",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        it = iter(self.loader)
        last: dict[str, float] = {}
        out: StepOutput | None = None
        global_batch = cfg.train.batch_size * self.dist.world_size
        t_prev = time.perf_counter()
        self.method.train()
        end = total if stop_after is None else min(total, stop_after)
        while self.step < end:
            t0 = time.perf_counter()
            batch = next(it).to(self.device)
            t_data = time.perf_counter() - t0
            values = self.schedules.at(self.step)
            out = self.train_step(batch, values)
            if self.last_skip is not None:
                self._handle_nonfinite(batch)
            else:
                self.consecutive_skips = 0
            self.step += 1
            now = time.perf_counter()
            step_time, t_prev = now - t_prev, now
            if self.step % cfg.train.log_every == 0 or self.step == total:
                last = self._log_step(out, values, step_time, t_data, global_batch)
                bar.set_postfix(
                    loss=f"{last['train/loss_total']:.3f}", img_s=f"{last['train/img_per_s']:.0f}"
                )
            bar.update(1)
            if self.step % cfg.checkpoint.every_steps == 0 and self.step < end:
                self.save_checkpoint()
            if cfg.recon.log_images_every and self.step % cfg.recon.log_images_every == 0:
                self._log_images(out)
        bar.close()
        self.save_checkpoint()
        if out is not None:
            self._log_images(out)
        if self.tracker is not None:
            self.tracker.finish("FINISHED" if self.step >= total else "KILLED")
        return last

    def _handle_nonfinite(self, batch) -> None:  # noqa: ANN001 - Batch
        """Count a skipped step; after `train.max_nonfinite_steps` in a row, stop with a diagnostic."""
        self.consecutive_skips += 1
        self.skipped_steps += 1
        info = {"step": self.step + 1, "consecutive": self.consecutive_skips, **self.last_skip}
        log.warning("step %d skipped: %s", self.step + 1, json.dumps(info))
        if self.dist.is_main:
            skipped = {"train/nonfinite_skipped": float(self.skipped_steps)}
            self.metrics_file.append(self.step + 1, skipped)
            if self.tracker is not None:
                self.tracker.log_metrics(skipped, self.step + 1)
        if self.consecutive_skips < self.cfg.train.max_nonfinite_steps:
            return
        # No update was applied by the skipped steps: the current state is the last good one.
        path = self.save_checkpoint()
        diag = {
            **info,
            "batch": batch_statistics(batch),
            "checkpoint": str(path),
            "rank": self.dist.rank,
        }
        diag_path = self.run_dir / f"nonfinite_step_{self.step + 1:08d}_rank{self.dist.rank}.json"
        diag_path.write_text(json.dumps(diag, indent=1))
        if self.tracker is not None:
            self.tracker.finish("FAILED")
        raise FloatingPointError(
            f"{self.consecutive_skips} consecutive non-finite steps (last: step {self.step + 1}, "
            f"{self.last_skip['reason']}; terms {self.last_skip}). Diagnostic: {diag_path}; "
            f"last good state saved in {path}"
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
            "train/weight_decay": values["weight_decay"],
            "train/momentum": values["momentum"],
            "train/teacher_temp": values["teacher_temp"],
            "train/img_per_s": global_batch / max(step_time, 1e-9),
            "train/data_wait_frac": min(t_data / max(step_time, 1e-9), 1.0),
        }
        metrics["train/max_mem_gb"] = max_memory_gb(self.device)
        achieved = self.flops_per_image * global_batch / max(step_time, 1e-9)
        metrics["train/tflops"] = achieved / 1e12
        if self.peak_flops is not None:
            metrics["train/mfu"] = achieved / (self.peak_flops * self.dist.world_size)
        stats = getattr(self.loader, "stats", None)
        if stats is not None:
            skipped = stats() if callable(stats) else stats
            if isinstance(skipped, dict) and "skipped" in skipped:
                metrics["data/skipped"] = float(skipped["skipped"])
        if self.dist.is_main:
            self.metrics_file.append(self.step, metrics)
            if self.tracker is not None:
                self.tracker.log_metrics(metrics, self.step)
        return metrics

    def _log_images(self, out: StepOutput) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / "recon_grid.png"
        if save_recon_grid(out, path) and self.tracker is not None:
            self.tracker.log_artifact(path, artifact_path=f"recon/step_{self.step:08d}")


def pretrain(cfg: Config) -> dict[str, float]:
    """Run (or resume) the pretraining described by `cfg`; returns the last logged metrics."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trainer = Trainer(cfg)
    from evals.watch import background_watcher  # eval.watch: evaluate checkpoints as they land

    with background_watcher(cfg, trainer.dist.is_main):
        return trainer.fit()
