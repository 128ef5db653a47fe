"""Parallelization: one pass over the plain method modules, chosen by `train.strategy`.

The method (student, teacher, heads, decoders, losses) is built as plain `nn.Module`s that know
nothing about distribution. `build_engine` then applies, in this order: activation checkpointing
(`train.activation_checkpointing`), `torch.compile` of each transformer block (`train.compile`),
and the data-parallel wrapper of `train.strategy`:

- ``single``: no wrapper (a launcher world of several processes falls back to ``ddp``);
- ``ddp``: `DistributedDataParallel` on the student;
- ``fsdp2``: `fully_shard` per transformer block, then per called root (student; teacher encoder
  and head), with a bf16-params / fp32-reduce policy on devices with bf16 support when
  `train.precision=bf16`. The EMA teacher is sharded exactly like the student, so its update is
  a fused elementwise op on the local shards;
- ``deepspeed``: a DeepSpeed engine with ZeRO stage `train.zero_stage` (1, 2 or 3) around the
  student and our AdamW. The teacher stays a replicated plain module; under ZeRO-3 its EMA
  update gathers the student's partitioned parameters.

The engine is what the training loop talks to: `student_fn` (call it for the student forward),
`optimizer` (param groups carry lr/wd multipliers, `pretrain/param_groups.py`), `backward`, `clip_grad_norm`, `step`,
`update_teacher`, and the checkpoint state (`state_to_save` / `load_state`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from pretrain.param_groups import GroupRule, param_groups

log = logging.getLogger("equirecon.parallel")

STRATEGIES = ("single", "ddp", "fsdp2", "deepspeed")
DEEPSPEED_SUBDIR = "deepspeed"  # DeepSpeed's own files inside a checkpoint directory
DEEPSPEED_TAG = "state"


def build_optimizer(
    student: nn.Module, fused: bool | None = None, rule: GroupRule | None = None
) -> torch.optim.Optimizer:
    """AdamW over the parameter groups of `rule` (`pretrain.param_groups`; None: no layer-wise
    decay or freeze, weight decay only on matrices that are not tokens/position embedding).

    `fused`: torch's fused AdamW kernel (one pass over each tensor: on CPU ~4x faster than the
    per-tensor loop torch picks by default there). None: fused for plain CPU/CUDA float
    tensors, the multi-tensor (`foreach`) kernel for sharded DTensors (FSDP2).
    """
    groups = param_groups(student, rule)
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = all(
            type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
            for p in params
        )
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), **kernel)


def _blocks(module: nn.Module | None) -> list[nn.Module]:
    """The transformer blocks of a student/teacher (`…encoder.backbone.blocks`)."""
    if module is None:
        return []
    return list(module.encoder.backbone.blocks)


def apply_activation_checkpointing(module: nn.Module) -> None:
    """Recompute each block's activations in backward (parameter names are unchanged)."""
    from torch.distributed._composable import checkpoint

    for block in _blocks(module):
        checkpoint(block)


def apply_compile(module: nn.Module | None, backend: str = "inductor") -> None:
    """`torch.compile` each transformer block in place (parameter names are unchanged)."""
    for block in _blocks(module):
        block.compile(backend=backend)


def _total_norm_value(norm: torch.Tensor) -> float:
    if hasattr(norm, "full_tensor"):  # DTensor norm of sharded gradients
        norm = norm.full_tensor()
    return float(norm)


class Engine:
    """`single`/`ddp`: the plain loop (`loss.backward()`, clip, `optimizer.step()`)."""

    name = "single"

    def __init__(
        self, method: nn.Module, student_fn: nn.Module, rule: GroupRule | None = None
    ) -> None:
        self.method = method
        self.student_fn = student_fn
        self.optimizer = build_optimizer(method.student, rule=rule)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip to `max_norm` (inf: measure only); the total norm before clipping."""
        params = [p for p in self.method.student.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        value = _total_norm_value(norm)  # the step's host sync (the loop reports and checks it)
        if math.isfinite(value) and value > max_norm:  # below: a pass over the grads saved
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return value

    def step(self, grad_norm: float) -> float:
        """Apply the update; returns the gradient norm to report (`grad_norm` from clipping)."""
        self.optimizer.step()
        return grad_norm

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1 − m)·student, fused over the (local shards of) parameters:
        the method's own EMA (`SSLMethod.update_teacher`); strategies first make the parameters
        what it needs (FSDP2: resharded; ZeRO-3: gathered)."""
        self.method.update_teacher(momentum)

    # ---- checkpoint state (DCP): same keys and parameter names for every strategy ----------
    def state_to_save(self) -> dict[str, Any]:
        m = self.method
        return {
            "student": get_model_state_dict(m.student),
            "teacher": get_model_state_dict(m.teacher) if m.teacher is not None else {},
            "optimizer": get_optimizer_state_dict(m.student, self.optimizer),
        }

    def state_to_load(self) -> dict[str, Any]:
        return self.state_to_save()

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        m = self.method
        set_model_state_dict(m.student, state["student"])
        if m.teacher is not None:
            set_model_state_dict(m.teacher, state["teacher"])
        set_optimizer_state_dict(m.student, self.optimizer, state["optimizer"])

    def save_extra(self, path: Path) -> None:
        """Strategy-specific files written into the checkpoint directory (all ranks)."""

    def reshard_supported(self) -> bool:
        return True


class FSDP2Engine(Engine):
    name = "fsdp2"

    def _reshard_all(self) -> None:
        """Back to sharded parameters: FSDP2 roots (the teacher's encoder/head) stay unsharded
        after their forward, and the EMA must see the sharded DTensors on both sides."""
        from torch.distributed.fsdp import FSDPModule

        for module in (self.method.student, self.method.teacher):
            if module is None:
                continue
            for sub in module.modules():
                if isinstance(sub, FSDPModule):
                    sub.reshard()

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        self._reshard_all()
        super().update_teacher(momentum)


class DeepSpeedEngine(Engine):
    """ZeRO 1/2/3 via DeepSpeed; our AdamW is the client optimizer, clipping is DeepSpeed's."""

    name = "deepspeed"

    def __init__(self, method: nn.Module, cfg: Any, device: torch.device) -> None:
        import deepspeed  # optional: the `deepspeed` package (pip install equirecon has it)

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
        optimizer = build_optimizer(method.student, fused=False, rule=GroupRule.from_config(cfg))
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

    def backward(self, loss: torch.Tensor) -> None:
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
        import contextlib

        if self.zero_stage < 3:
            return contextlib.nullcontext()
        params = list(self.method.student.parameters())
        return self._deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        with self._gathered_student():
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

    def reshard_supported(self) -> bool:
        return False


def _ensure_process_group_for_deepspeed() -> None:
    """DeepSpeed needs a process group even for one process: make a 1-rank gloo/nccl world."""
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


def _fsdp2_shard(method: nn.Module, cfg: Any, device: torch.device) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    world = dist.get_world_size() if dist.is_initialized() else 1
    if not dist.is_initialized():
        raise RuntimeError(
            "train.strategy=fsdp2 needs torch.distributed: launch with torchrun (even "
            "--nproc_per_node=1) or Slurm"
        )
    mesh = init_device_mesh(device.type, (world,))
    bf16_params = (
        cfg.train.precision == "bf16"
        and device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    )
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16_params
        else MixedPrecisionPolicy()
    )
    for block in _blocks(method.student):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(method.student, mesh=mesh, mp_policy=policy)
    teacher = method.teacher
    if teacher is not None:
        for block in _blocks(teacher):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        # The method calls the teacher's encoder and head directly, so each is its own root.
        for name, child in teacher.named_children():
            if any(p.numel() for p in child.parameters()):
                fully_shard(child, mesh=mesh, mp_policy=policy)
                log.debug("fsdp2: sharded teacher.%s", name)


def build_engine(method: nn.Module, cfg: Any, device: torch.device) -> Engine:
    """Parallelize `method` in place for `train.strategy` and return its engine."""
    tr = cfg.train
    strategy = tr.strategy
    world = dist.get_world_size() if dist.is_initialized() else 1
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy={strategy!r}; choose one of {STRATEGIES}")
    if strategy == "single" and world > 1:
        strategy = "ddp"  # several processes were launched: keep them in sync
    rule = GroupRule.from_config(cfg)
    if tr.activation_checkpointing:
        apply_activation_checkpointing(method.student)
    if tr.compile:
        apply_compile(method.student, tr.compile_backend)
        apply_compile(method.teacher, tr.compile_backend)
    if strategy == "single":
        return Engine(method, method.student, rule)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        if not dist.is_initialized():
            return Engine(method, method.student, rule)  # a 1-process "world": nothing to sync
        ids = [device.index] if device.type == "cuda" else None
        engine = Engine(method, DDP(method.student, device_ids=ids), rule)
        engine.name = "ddp"
        return engine
    if strategy == "fsdp2":
        _fsdp2_shard(method, cfg, device)
        return FSDP2Engine(method, method.student, rule)
    if tr.zero_stage not in (1, 2, 3):
        raise ValueError(f"train.zero_stage={tr.zero_stage}; choose 1, 2 or 3")
    _ensure_process_group_for_deepspeed()
    return DeepSpeedEngine(method, cfg, device)
