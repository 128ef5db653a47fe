"""The pretraining loop: one process, or one rank of a torchrun/Slurm world.

The entry point that runs it (signals, the background eval watcher) is `launch.entry.pretrain`.
The parallelization (`train.strategy`: single | ddp | fsdp2 | deepspeed) is one pass applied by
`pretrain.parallel.build_engine`; this loop only talks to the engine it returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from equirecon.config import Config, flat_dict, save_config, to_dict
from equirecon.errors import CheckpointError
from equirecon.resume_config import check_resume_config, format_changes, load_saved_config
from equirecon.tracking import MetricsFile, Tracker, describe_tracking
from pretrain.checkpoint import Checkpointer, read_meta, select_checkpoint_all_ranks
from pretrain.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_min,
    barrier,
    init_distributed,
)
from pretrain.meters import device_peak_flops, max_memory_gb, ssl_step_flops
from pretrain.methods import build_method
from pretrain.methods.base import SSLMethod, StepOutput
from pretrain.parallel import build_engine, build_optimizer
from pretrain.schedules import apply_schedules, build_schedules

__all__ = ["Trainer", "build_optimizer", "transform_generator"]

log = logging.getLogger("equirecon.pretrain")


def build_loader(cfg: Config, dist_info: DistInfo, patch_size: int):  # noqa: ANN201
    """The training reader of `data.backend` (yields `Batch` on the CPU), from its registered
    factory (`data_pipeline.backends`)."""
    from data_pipeline.backends import get_backend

    return get_backend(cfg.data.backend).build(cfg, dist_info, patch_size)


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


def transform_generator(seed: int, step: int) -> torch.Generator:
    """The θ draw of step `step` for the whole global batch (each rank takes its slice): a pure
    function of (seed, step), so resumes and any world size see the same θ per image."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


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
        # Identical initial weights on every rank (the teacher is not broadcast by DDP/FSDP) ...
        torch.manual_seed(cfg.train.seed)
        # The checkpoint to resume (verified; damaged newer ones are passed over) and the
        # config changes it allows, before this config replaces the saved one.
        self.resume_from, self.damaged_checkpoints = select_checkpoint_all_ranks(
            self.run_dir / "checkpoints"
        )
        self.resume_changes = self._check_resume_config()
        self._resume_used = False

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        barrier()

        self.method: SSLMethod = build_method(cfg).to(self.device)
        self.method.batch_slice = (self.dist.rank, self.dist.world_size)
        # ... and rank-specific randomness from here on (drop-path, reader-side draws).
        torch.manual_seed(cfg.train.seed + 1_000 * self.dist.rank)
        self.engine = build_engine(self.method, cfg, self.device)
        self.student_fn = self.engine.student_fn
        self.optimizer = self.engine.optimizer
        self.schedules = build_schedules(cfg, self.dist.world_size)
        if self.dist.is_main:
            log.info("%s", self.lr_summary())
        self.checkpointer = Checkpointer(
            self.run_dir, keep=cfg.checkpoint.keep, keep_every=cfg.checkpoint.keep_every
        )
        backbone = self.method.backbone
        self.loader = build_loader(cfg, self.dist, backbone.patch_size)
        self.step = 0
        self.preempted = False
        self.last_grad_norm: float | None = None
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

    def _check_resume_config(self) -> dict[str, tuple[Any, Any]]:
        """Refuse a config that changes what the checkpoint holds; return the allowed changes."""
        if self.resume_from is None:
            return {}
        saved_path = self.resume_from / "config.yaml"
        if not saved_path.is_file():
            saved_path = self.run_dir / "config.yaml"
        if not saved_path.is_file():
            return {}
        saved_ws = read_meta(self.resume_from).get("world_size")
        changes = check_resume_config(
            load_saved_config(saved_path),
            self.cfg,
            self.run_dir,
            saved_world_size=saved_ws,
            world_size=self.dist.world_size,
        )
        if changes and self.dist.is_main:
            log.info("resuming with changed settings (allowed):\n%s", format_changes(changes))
        return changes

    def _report_resume(self) -> None:
        """Warn about damaged checkpoints passed over; tag the MLflow run with what happened."""
        tags: dict[str, str] = {}
        if self.damaged_checkpoints:
            damaged = "; ".join(f"{d.path.name}: {d.describe()}" for d in self.damaged_checkpoints)
            log.warning(
                "damaged checkpoint(s) skipped: %s. Resuming from %s instead (the damaged "
                "ones are replaced when training reaches their step again).",
                damaged,
                self.resume_from,
            )
            tags["checkpoint.damaged"] = damaged[:5000]
        if self.resume_from is not None:
            tags["checkpoint.resumed_from"] = self.resume_from.name
        if self.resume_changes:
            tags["resume.changed"] = ", ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.resume_changes.items()
            )[:5000]
        if tags and self.tracker is not None:
            self.tracker.set_tags(tags)

    def resolved_params(self) -> dict[str, Any]:
        """Values derived from the config and the world size (logged as MLflow params)."""
        return {
            "resolved.global_batch": self.cfg.train.batch_size * self.dist.world_size,
            "resolved.peak_lr": self.schedules.lr,
            "resolved.lr_scaling": self.cfg.train.lr_scaling,
        }

    def lr_summary(self) -> str:
        """One line: the peak lr and how it follows from train.base_lr and the global batch."""
        tr = self.cfg.train
        b = tr.batch_size * self.dist.world_size
        rule = {"linear": f"·{b}/256", "sqrt_1024": f"·sqrt({b}/1024)", "none": ""}
        return (
            f"peak lr {self.schedules.lr:.6g} = train.base_lr {tr.base_lr:g}"
            f"{rule.get(tr.lr_scaling, '')} (train.lr_scaling={tr.lr_scaling}, global batch {b}); "
            f"warm-up {tr.warmup_steps} steps, prototype layer frozen for "
            f"{tr.freeze_last_layer_steps or 0} steps"
        )

    # ---- checkpoint state -------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        return {"torch_rng": torch.get_rng_state(), "data": json.dumps(self.loader.state_dict())}

    def _state(self, for_load: bool = False, saved_world_size: int | None = None) -> dict[str, Any]:
        """The DCP state: model/optimizer (from the engine), per-rank RNG + data position
        (under `rank{r}`: DCP keeps one copy per key), and the step."""
        engine_state = self.engine.state_to_load() if for_load else self.engine.state_to_save()
        own = self.dist.rank
        if saved_world_size is not None and own >= saved_world_size:
            own = 0  # resharded onto more ranks: the new ranks start from rank 0's values
        return {
            **engine_state,
            f"rank{own}": self._rank_state(),
            "trainer": {"step": torch.tensor(self.step)},
        }

    def save_checkpoint(self) -> Path:
        meta = {
            "world_size": self.dist.world_size,
            "arch": self.cfg.model.arch,
            "strategy": self.engine.name,
        }
        if self.tracker is not None and self.tracker.run_id:
            meta["mlflow_run_id"] = self.tracker.run_id
        import yaml

        return self.checkpointer.save(
            self.step,
            self._state(),
            yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            meta,
            extra_writer=self.engine.save_extra,
        )

    def maybe_resume(self) -> bool:
        """Load the newest intact checkpoint (`checkpoints/latest` unless it is damaged) if
        there is one. A checkpoint written by another number of
        ranks is resharded (model, teacher and optimizer exactly; the data position restarts at
        the next epoch and the RNG is reseeded, since they were per rank)."""
        if self._resume_used:  # a second fit() of this Trainer: what is newest now
            self.resume_from, _ = select_checkpoint_all_ranks(self.run_dir / "checkpoints")
        self._resume_used = True
        path = self.resume_from
        if path is None:
            return False
        meta = read_meta(path)
        saved_ws = int(meta.get("world_size", self.dist.world_size))
        resharded = saved_ws != self.dist.world_size
        if resharded and not self.engine.reshard_supported():
            raise CheckpointError(
                f"{path} was written by {saved_ws} ranks with train.strategy={meta.get('strategy')}; "
                f"DeepSpeed ZeRO optimizer states resume only at the same world size (now "
                f"{self.dist.world_size}). Resume with {saved_ws} ranks, or use ddp/fsdp2 (DCP "
                "checkpoints reshard to any world size)."
            )
        if meta.get("strategy") == "deepspeed" and self.engine.name != "deepspeed":
            raise CheckpointError(
                f"{path} holds DeepSpeed optimizer state; resume it with train.strategy=deepspeed"
            )
        state = self._state(for_load=True, saved_world_size=saved_ws)
        self.checkpointer.load(path, state)
        self.engine.load_state(state, path)
        own = next(v for k, v in state.items() if k.startswith("rank"))
        self.step = int(state["trainer"]["step"])
        if resharded:
            torch.manual_seed(self.cfg.train.seed + 1_000 * self.dist.rank + self.step)
        else:
            torch.set_rng_state(own["torch_rng"])
        self.loader.load_state_dict(json.loads(own["data"]))
        if self.dist.is_main:
            how = (
                f" (resharded from {saved_ws} to {self.dist.world_size} ranks)" if resharded else ""
            )
            log.info("resumed from %s at step %d%s", path, self.step, how)
        return True

    # ---- the loop -----------------------------------------------------------------------------
    def _apply_schedules(self, values: dict[str, float]) -> None:
        apply_schedules(self.engine.param_groups, values)

    def train_step(self, batch, values: dict[str, float]) -> StepOutput:  # noqa: ANN001 - Batch
        """One update. A non-finite loss or gradient skips the update (all ranks agree) and
        sets `self.last_skip` to a description of the offending terms."""
        cfg = self.cfg
        self._apply_schedules(values)
        gen = transform_generator(cfg.train.seed, self.step)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.train.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.method.compute_losses(self.student_fn, batch, values["teacher_temp"], gen)
        engine = self.engine
        engine.zero_grad()
        self.last_skip = None
        # One flag for all ranks (a skipped step must be skipped everywhere, or DDP deadlocks).
        finite = all_reduce_min(torch.isfinite(out.loss_total.detach()).float())
        if finite.item() < 1:
            self.last_skip = {"reason": "non-finite loss", **_loss_terms(out)}
            return out
        engine.backward(out.loss_total)
        max_norm = cfg.train.clip_grad if cfg.train.clip_grad > 0 else float("inf")
        grad_norm = engine.clip_grad_norm(max_norm)  # the same total norm on every rank
        if not math.isfinite(grad_norm):
            engine.zero_grad()
            self.last_skip = {
                "reason": "non-finite gradient",
                "grad_norm": grad_norm,
                **_loss_terms(out),
            }
            return out
        self.last_grad_norm = engine.step(grad_norm)
        engine.update_teacher(values["momentum"])
        return out

    def fit(
        self, stop_after: int | None = None, should_stop: Callable[[], bool] | None = None
    ) -> dict[str, float]:
        """Train to `train.max_steps` (resuming from `checkpoints/latest` if present).

        `stop_after`: checkpoint and return once this many steps are done (preemption drill);
        the schedules still follow `train.max_steps`, so a later `fit()` continues exactly.
        `should_stop`: polled at every step boundary on every rank (e.g. a flag set by a
        SIGUSR2/SIGTERM handler); when it is true on any rank, all ranks save a checkpoint of
        the current step and return with `self.preempted = True`.
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
            if self.tracker.enabled:
                log.info("%s", describe_tracking(self.tracker.uri))
            self.tracker.log_params({**flat_dict(cfg), **self.resolved_params()})
            self.tracker.log_artifact(self.run_dir / "config.yaml")
            self._report_resume()
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
            if should_stop is not None and self._any_rank(should_stop()):
                self.preempted = True
                break
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
        if self.preempted and self.dist.is_main:
            log.info("stop requested: checkpoint of step %d saved, returning", self.step)
        return last

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one (needs all ranks to call)."""
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(-all_reduce_min(-value).item() > 0)

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
        if save_recon_grid(out, path) and self.tracker is not None:
            self.tracker.log_artifact(path, artifact_path=f"recon/step_{self.step:08d}")
