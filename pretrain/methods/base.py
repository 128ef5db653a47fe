"""What every base SSL method shares: the registry, the encoder (backbone + split head), the
EMA teacher and the step's output.

A method is an ``SSLMethod`` built as ``Cls(cfg)``, registered under its ``method.name`` with
``@register_method(name)`` in its own module ``pretrain/methods/<name>.py`` (found by
``pretrain.methods`` without a list to edit); its config defaults are the torch-free
``equirecon/methods/<name>.py`` spec of the same name. The engine relies on:

- ``student``: every module with gradients (wrapped by DDP/FSDP and passed back as
  ``student_fn``; all of a step's student compute goes through ONE ``student_fn(...)`` call);
- ``teacher``: EMA copy of the student without decoders, or None (``has_teacher``);
- ``backbone``: the student backbone; ``recon``: the reconstruction branch
  (`pretrain.methods.recon.ReconBranch`: g_θ, targets, split head, decoders, L_recon) that
  every method composes; ``transform``: its g_θ (None when ``recon.enabled=false``);
- ``compute_losses(student_fn, batch, teacher_temp, generator) -> StepOutput`` and
  ``update_teacher(momentum)`` (no-op without a teacher).

State kept across steps (e.g. iBOT's centers) lives in buffers of ``student`` or ``teacher`` so
that checkpoints carry it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from data_pipeline.batch import Batch
from equirecon.methods import method_names
from pretrain.methods.recon import ReconBranch
from pretrain.methods.step_output import N_LOGGED_IMAGES, StepOutput  # noqa: F401  (re-export)
from pretrain.models.backbone import Backbone, backbone_kwargs, build_backbone
from pretrain.models.heads import SplitHead

if TYPE_CHECKING:
    from data_pipeline.transforms import EquiTransform

_METHODS: dict[str, type[SSLMethod]] = {}


def register_method(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    """Class decorator: the implementation of `method.name` `name`, whose torch-free spec
    (`equirecon.methods`: split dims, recipe) must be registered under the same name."""
    if name not in method_names():
        raise ValueError(
            f"method {name!r} has no spec: declare a MethodSpec in equirecon/methods/{name}.py "
            f"(registered specs: {method_names()})"
        )

    def wrap(cls: type[SSLMethod]) -> type[SSLMethod]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_method(name: str) -> type[SSLMethod]:
    if name not in _METHODS:
        raise KeyError(f"unknown method.name {name!r}; available: {sorted(_METHODS)}")
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)


class Encoder(nn.Module):
    """Backbone + optional split head: `forward(images, masks) -> (z_inv, z_equi | None)`.

    Without a split head (recon disabled), z_inv is the backbone tokens themselves, so the
    method is exactly the original base method.
    """

    def __init__(self, backbone: Backbone, split_head: SplitHead | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.split_head = split_head

    @property
    def out_dim(self) -> int:
        return self.split_head.d_inv if self.split_head is not None else self.backbone.embed_dim

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z_inv, z_equi) of every token, (B, P + N, ·); with `rows` (positions in the
        flattened (B·(P + N)) tokens, see `Backbone.forward`): (z_inv of those rows (R, ·),
        None), the backbone's last block and the split head computing only them."""
        if rows is not None:
            tokens = self.backbone(images, masks, rows=rows)
            return (tokens if self.split_head is None else self.split_head.inv(tokens)), None
        tokens = self.backbone(images, masks)
        if self.split_head is None:
            return tokens, None
        return self.split_head(tokens)


def build_encoder(cfg: Any, recon: ReconBranch) -> Encoder:
    """Student backbone of `model.*` + the recon branch's split head (None when recon is off)."""
    backbone = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
    return Encoder(backbone, recon.build_split_head(backbone.embed_dim))


def make_teacher(student: nn.Module, skip_prefixes: tuple[str, ...] = ("decoders",)) -> nn.Module:
    """A frozen deep copy of the student without the modules that only the student has."""
    teacher = copy.deepcopy(student)
    for prefix in skip_prefixes:
        if hasattr(teacher, prefix):
            setattr(teacher, prefix, None)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def build_mlp(
    in_dim: int, hidden_dim: int, out_dim: int, n_layers: int, last_bias: bool = True
) -> nn.Sequential:
    """`n_layers` linear layers, Linear-BatchNorm-ReLU between them (VICReg/SimCLR style).

    `forward((B, in_dim)) -> (B, out_dim)`; B >= 2 in training (batch statistics).
    """
    if n_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got n_layers={n_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    return nn.Sequential(*layers)


class SSLMethod(nn.Module):
    """Base class: `student` (trained, wrapped by DDP/FSDP by the engine), `teacher` (EMA).

    Subclasses set `cfg`, `recon` (a `ReconBranch` of `cfg`, built before the student so that
    the split head and decoders come from it), `student` and `teacher`, and implement
    `compute_losses`: `recon.views` -> the student/teacher forwards and the method's loss ->
    `recon.step_output`.
    """

    name: str = ""
    has_teacher: bool = False  # evaluations read the teacher's backbone when True
    cfg: Any
    recon: ReconBranch
    student: nn.Module
    teacher: nn.Module | None

    def train(self, mode: bool = True) -> SSLMethod:
        """As `nn.Module.train`, but the EMA teacher always stays in eval mode (no stochastic
        depth or dropout in the targets, as DINOv2)."""
        super().train(mode)
        if getattr(self, "teacher", None) is not None:
            self.teacher.eval()
        return self

    @property
    def transform(self) -> EquiTransform | None:
        """g_θ of `recon.transform` at the global crop size, None when recon is off."""
        return self.recon.transform

    @property
    def batch_slice(self) -> tuple[int, int]:
        """(which slice, how many slices) of the global batch this process holds: (rank, world
        size) under data parallelism. Set by the engine; only the θ draw uses it."""
        return self.recon.batch_slice

    @batch_slice.setter
    def batch_slice(self, value: tuple[int, int]) -> None:
        self.recon.batch_slice = tuple(value)

    @property
    def backbone(self) -> Backbone:
        """The student backbone (a teacher's, if any, is `self.teacher.encoder.backbone`)."""
        return self.student.encoder.backbone

    def compute_losses(
        self,
        student_fn: nn.Module,
        batch: Batch,
        teacher_temp: float,
        generator: torch.Generator,
    ) -> StepOutput:
        """One training step's losses; `student_fn` is `student`, maybe DDP-wrapped."""
        raise NotImplementedError

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching (teacher, student) parameter lists for the EMA update."""
        if self.teacher is None:
            return [], []
        student_params = dict(self.student.named_parameters())
        t, s = [], []
        for name, p in self.teacher.named_parameters():
            t.append(p)
            s.append(student_params[name])
        return t, s

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1 − m)·student, fused over all parameters.

        The one EMA of the code base: the engine's `update_teacher` calls it (after gathering
        or resharding what its strategy needs), so that sharded (FSDP2 DTensor) parameters are
        updated on their local shards.
        """
        ema_update_(*self.ema_pairs(), momentum)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: in-place ops update the DTensor), else `t`."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """teacher ← m·teacher + (1 − m)·student in place: one fused pass (`lerp`) over all tensors
    (over the local shards of sharded DTensors, which the teacher and student share)."""
    if teacher:
        torch._foreach_lerp_(
            [_local(p) for p in teacher], [_local(p).detach() for p in student], 1.0 - momentum
        )
