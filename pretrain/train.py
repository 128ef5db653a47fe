"""The pretraining loop: one process, or one rank of a torchrun/Slurm world.

The entry point that runs it (signals, the background eval watcher) is `launch.entry.pretrain`.
The parallelization (`train.strategy`, a registered strategy of `pretrain/strategies/`) is one
pass applied by `pretrain.parallel.build_engine`; this loop only talks to the engine it returns.
The trainer's other jobs are in their own modules, mixed into `Trainer`: checkpoints and resuming
(`pretrain.train_checkpoint`), metrics and images (`pretrain.train_logging`), skipped non-finite
steps (`pretrain.train_nonfinite`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from equirecon.config import Config, flat_dict, save_config
from equirecon.storage import guard_write
from equirecon.tracking import MetricsFile, Tracker, describe_tracking
from pretrain.checkpoint import Checkpointer, read_meta, select_checkpoint_all_ranks
from pretrain.distributed import DistInfo, all_reduce_min, barrier, init_distributed
from pretrain.init_weights import InitSource, init_method_backbones
from pretrain.meters import device_peak_flops, ssl_step_flops
from pretrain.methods import build_method
from pretrain.methods.base import SSLMethod, StepOutput
from pretrain.optimizer import build_optimizer
from pretrain.parallel import build_engine
from pretrain.schedules import apply_schedules, build_schedules
from pretrain.train_checkpoint import CheckpointMixin
from pretrain.train_logging import LoggingMixin
from pretrain.train_nonfinite import NonFiniteMixin, loss_terms

# build_optimizer: re-exported (its home is pretrain.optimizer)
__all__ = ["Trainer", "build_loader", "build_optimizer", "transform_generator"]

log = logging.getLogger("equirecon.pretrain")


def build_loader(cfg: Config, dist_info: DistInfo, patch_size: int):  # noqa: ANN201
    """The training reader of `data.backend` (yields `Batch` on the CPU), from its registered
    factory (`data_pipeline.backends`)."""
    from data_pipeline.backends import get_backend

    return get_backend(cfg.data.backend).build(cfg, dist_info, patch_size)


def transform_generator(seed: int, step: int) -> torch.Generator:
    """The θ draw of step `step` for the whole global batch (each rank takes its slice): a pure
    function of (seed, step), so resumes and any world size see the same θ per image."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


class Trainer(CheckpointMixin, LoggingMixin, NonFiniteMixin):
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
            with guard_write("the run directory", self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        barrier()

        method = build_method(cfg)
        # Continued pretraining (model.init) in a fresh run; a resumed run restores its own and
        # carries on the record of where the run started (`init_record`, in every checkpoint).
        self.init_source: InitSource | None = None
        self.init_record = read_meta(self.resume_from).get("init") if self.resume_from else None
        if cfg.model.init and self.resume_from is None:
            self.init_source = init_method_backbones(method, cfg.model.init, cfg.model.init_format)
            self.init_record = self.init_source.record(cfg.model.init)
            if self.dist.is_main:
                log.info("model.init: %s", self.init_source.describe())
        self.method: SSLMethod = method.to(self.device)
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
            self.last_skip = {"reason": "non-finite loss", **loss_terms(out)}
            return out
        engine.backward(out.loss_total)
        max_norm = cfg.train.clip_grad if cfg.train.clip_grad > 0 else float("inf")
        grad_norm = engine.clip_grad_norm(max_norm)  # the same total norm on every rank
        if not math.isfinite(grad_norm):
            engine.zero_grad()
            self.last_skip = {
                "reason": "non-finite gradient",
                "grad_norm": grad_norm,
                **loss_terms(out),
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
        if self.init_source is not None and not resumed:
            # The starting model as checkpoint step 0 (the loaded backbone, before any update):
            # `eval watch`, `equirecon eval` and `report` evaluate and show it like any step. A
            # resume starts from a checkpoint and never writes it again.
            self.save_checkpoint()
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
        try:  # the bar ends its line also when a step fails (the error starts a new one)
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
                        loss=f"{last['train/loss_total']:.3f}",
                        img_s=f"{last['train/img_per_s']:.0f}",
                    )
                bar.update(1)
                if self.step % cfg.checkpoint.every_steps == 0 and self.step < end:
                    self.save_checkpoint()
                if cfg.recon.log_images_every and self.step % cfg.recon.log_images_every == 0:
                    self._log_images(out)
        finally:
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
