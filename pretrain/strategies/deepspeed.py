"""`train.strategy=deepspeed`: a DeepSpeed engine with ZeRO stage `train.zero_stage` (1, 2 or 3)
around the student and our AdamW. The teacher stays a replicated plain module; under ZeRO-3 its
EMA update gathers the student's partitioned parameters.

Checkpoints: the teacher (and the student, gathered, for evaluation and export) in the DCP
state, the student and its optimizer in DeepSpeed's own files (`DEEPSPEED_SUBDIR`), which only
this strategy reads back, at the world size that wrote them. DeepSpeed needs a process group
even for one process: a 1-rank world is initialized when there is none.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from pretrain.strategies.base import Strategy, register_strategy
from pretrain.strategies.engine import Engine

DEEPSPEED_SUBDIR = "deepspeed"  # DeepSpeed's own files inside a checkpoint directory
DEEPSPEED_TAG = "state"


class DeepSpeedEngine(Engine):
    """ZeRO 1/2/3 via DeepSpeed; our AdamW is the client optimizer, clipping is DeepSpeed's."""

    name = "deepspeed"

    def __init__(self, method: Any, cfg: Any, device: Any, rule: Any = None) -> None:
        import deepspeed  # optional: the `deepspeed` package (pip install equirecon has it)
        import torch.distributed as dist

        from pretrain.optimizer import build_optimizer
        from pretrain.param_groups import GroupRule

        self.method = method
        self.zero_stage = cfg.train.zero_stage
        bf16 = cfg.train.precision == "bf16" and device.type == "cuda"
        world = dist.get_world_size() if dist.is_initialized() else 1
        config = {
            "train_micro_batch_size_per_gpu": cfg.train.batch_size,
            "gradient_accumulation_steps": 1,
            "train_batch_size": cfg.train.batch_size * world,
            "gradient_clipping": cfg.train.clip_grad if cfg.train.clip_grad > 0 else 0.0,
            "zero_optimization": {"stage": self.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        # ZeRO partitions its own flat copies of each group's parameters; group keys (the lr/wd
        # multipliers) stay on the groups that `param_groups` returns.
        if rule is None:
            rule = GroupRule.from_config(cfg)
        optimizer = build_optimizer(method.student, fused=False, rule=rule)
        self.ds_engine, self.optimizer, _, _ = deepspeed.initialize(
            model=method.student, optimizer=optimizer, config=config, dist_init_required=False
        )
        self.student_fn = self.ds_engine
        self._deepspeed = deepspeed

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.ds_engine.zero_grad()

    def backward(self, loss: Any) -> None:
        self.ds_engine.backward(loss)

    def clip_grad_norm(self, max_norm: float) -> float:
        # DeepSpeed clips inside `step` (config `gradient_clipping`); its norm is read afterwards.
        return 0.0

    def step(self, grad_norm: float) -> float:
        self.ds_engine.step()
        norm = self.ds_engine.get_global_grad_norm()  # DeepSpeed clipped inside its step
        return grad_norm if norm is None else float(norm)

    def _gathered_student(self):  # noqa: ANN202 - context manager
        """Full student parameters on every rank for the duration (a no-op below ZeRO-3)."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        params = list(self.method.student.parameters())
        return self._deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def update_teacher(self, momentum: float) -> None:
        import torch

        with torch.no_grad(), self._gathered_student():
            super().update_teacher(momentum)

    def state_to_save(self) -> dict[str, Any]:
        m = self.method
        with self._gathered_student():
            student = {k: v.detach().clone() for k, v in m.student.state_dict().items()}
        return {
            "student": student,
            "teacher": m.teacher.state_dict() if m.teacher is not None else {},
        }

    def state_to_load(self) -> dict[str, Any]:
        # The student and its optimizer come back from DeepSpeed's own files (`save_extra`).
        m = self.method
        return {"teacher": m.teacher.state_dict() if m.teacher is not None else {}}

    def save_extra(self, path: Path) -> None:
        self.ds_engine.save_checkpoint(
            str(path / DEEPSPEED_SUBDIR), tag=DEEPSPEED_TAG, save_latest=False
        )

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        m = self.method
        if m.teacher is not None:
            m.teacher.load_state_dict(state["teacher"])
        load_path, _ = self.ds_engine.load_checkpoint(
            str(path / DEEPSPEED_SUBDIR),
            tag=DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if self.zero_stage == 3:
            # Loading leaves some partitioned parameters gathered; release them so the first
            # steps record the same ZeRO-3 prefetch trace as an uninterrupted run.
            self.ds_engine.empty_partition_cache()
        if load_path is None:
            raise FileNotFoundError(
                f"{path / DEEPSPEED_SUBDIR}: no DeepSpeed state in this checkpoint (was it written "
                "with another train.strategy?)"
            )


def ensure_process_group() -> None:
    """DeepSpeed needs a process group even for one process: make a 1-rank gloo/nccl world."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def build(method: Any, cfg: Any, device: Any, rule: Any) -> DeepSpeedEngine:
    if cfg.train.zero_stage not in (1, 2, 3):
        raise ValueError(f"train.zero_stage={cfg.train.zero_stage}; choose 1, 2 or 3")
    ensure_process_group()
    return DeepSpeedEngine(method, cfg, device, rule)


STRATEGY = register_strategy(
    Strategy(
        name="deepspeed",
        build=build,
        help="DeepSpeed ZeRO stage train.zero_stage (1, 2, 3) around the student and AdamW",
        same_world_size="DeepSpeed ZeRO optimizer states resume only at the same world size",
        own_checkpoint="DeepSpeed optimizer state",
    )
)
