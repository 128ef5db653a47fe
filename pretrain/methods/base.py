"""What every base SSL method shares: the student/teacher pair, the split head and the decoders."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pretrain.models.backbone import Backbone
from pretrain.models.decoder import ReconDecoder
from pretrain.models.heads import SplitHead

_METHODS: dict[str, type[SSLMethod]] = {}


def register_method(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    def wrap(cls: type[SSLMethod]) -> type[SSLMethod]:
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


@dataclass
class StepOutput:
    """Losses of one step (fp32 scalars) and tensors kept for logging/visualization."""

    loss_total: torch.Tensor
    loss_ssl: torch.Tensor
    loss_recon: torch.Tensor | None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    recon_inputs: torch.Tensor | None = None  # u (B, 3, H, W)
    recon_targets: list[torch.Tensor] = field(default_factory=list)  # u_k
    recon_preds: list[torch.Tensor] = field(default_factory=list)  # û_k
    transformed: torch.Tensor | None = None  # v2 = g_θ(u)


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
        self, images: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.backbone(images, masks)
        if self.split_head is None:
            return tokens, None
        return self.split_head(tokens)


def build_decoders(k: int, d_equi: int, image_size: int, grid: int, channels: int) -> nn.ModuleList:
    """K decoders reading the per-patch concatenation [z1_equi ; z2_equi] (2·d_equi)."""
    return nn.ModuleList(
        ReconDecoder(2 * d_equi, (image_size, image_size), (grid, grid), channels) for _ in range(k)
    )


def make_teacher(student: nn.Module, skip_prefixes: tuple[str, ...] = ("decoders",)) -> nn.Module:
    """A frozen deep copy of the student without the modules that only the student has."""
    teacher = copy.deepcopy(student)
    for prefix in skip_prefixes:
        if hasattr(teacher, prefix):
            setattr(teacher, prefix, None)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class SSLMethod(nn.Module):
    """Base class: `student` (trained, wrapped by DDP/FSDP by the engine) and `teacher` (EMA).

    Subclasses implement `forward_student` (everything with gradients, in ONE module call so that
    data-parallel wrappers see it) and `compute_losses`.
    """

    name: str = ""
    student: nn.Module
    teacher: nn.Module | None

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
        """teacher ← m·teacher + (1 − m)·student, fused over all parameters."""
        t, s = self.ema_pairs()
        if t:
            torch._foreach_mul_(t, momentum)
            torch._foreach_add_(t, [p.detach() for p in s], alpha=1.0 - momentum)
