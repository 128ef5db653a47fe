"""What every base SSL method shares: split head, decoders, g_θ views and the recon loss.

A method is an ``SSLMethod`` built as ``Cls(cfg)``. The engine relies on:

- ``student``: every module with gradients (wrapped by DDP/FSDP and passed back as
  ``student_fn``; all of a step's student compute goes through ONE ``student_fn(...)`` call);
- ``teacher``: EMA copy of the student without decoders, or None (``has_teacher``);
- ``backbone``: the student backbone; ``transform``: g_θ (None when ``recon.enabled=false``);
- ``compute_losses(student_fn, batch, teacher_temp, generator) -> StepOutput`` and
  ``update_teacher(momentum)`` (no-op without a teacher).

State kept across steps (e.g. iBOT's centers) lives in buffers of ``student`` or ``teacher`` so
that checkpoints carry it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.transforms import EquiTransform, build_transform
from pretrain.losses import recon_loss
from pretrain.models.backbone import Backbone, backbone_kwargs, build_backbone
from pretrain.models.decoder import ReconDecoder
from pretrain.models.heads import SplitHead

_METHODS: dict[str, type[SSLMethod]] = {}

N_LOGGED_IMAGES = 8  # images per StepOutput kept for the reconstruction grid


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


def build_encoder(cfg: Any) -> Encoder:
    """Student backbone of `model.*` + the split head D -> d_patch when `recon.enabled`."""
    backbone = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
    split_head = (
        SplitHead(backbone.embed_dim, cfg.d_patch, cfg.d_equi) if cfg.recon.enabled else None
    )
    return Encoder(backbone, split_head)


def build_decoders(
    k: int,
    d_equi: int,
    image_size: int,
    grid: int,
    channels: int,
    resize: str = "after_conv",
    kernel: int = 3,
) -> nn.ModuleList:
    """K decoders reading the per-patch concatenation [z1_equi ; z2_equi] (2·d_equi)."""
    size = (image_size, image_size)
    return nn.ModuleList(
        ReconDecoder(2 * d_equi, size, (grid, grid), channels, resize, kernel) for _ in range(k)
    )


def build_recon_decoders(cfg: Any, encoder: Encoder) -> nn.ModuleList | None:
    """The K decoders of `recon.*` for this encoder's patch grid, None when recon is off."""
    if not cfg.recon.enabled:
        return None
    r, size = cfg.recon, cfg.data.global_size
    grid = size // encoder.backbone.patch_size
    return build_decoders(
        r.k, cfg.d_equi, size, grid, r.decoder_channels, r.decoder_resize, r.decoder_kernel
    )


def decode_views(
    decoders: nn.ModuleList, equi_tokens: torch.Tensor, num_prefix_tokens: int
) -> list[torch.Tensor]:
    """Decoder predictions û_k from the student's z_equi of the two global views.

    Args:
        decoders: the K decoders.
        equi_tokens: (2B, P + N, d_equi) z_equi of [v1; v2] (prefix tokens first).
        num_prefix_tokens: P (CLS + registers), dropped before decoding.

    Returns:
        K tensors (B, 3, H, W) in normalized pixel space.
    """
    b = equi_tokens.shape[0] // 2
    patches = equi_tokens[:, num_prefix_tokens:]
    decoder_in = torch.cat([patches[:b], patches[b:]], dim=-1)  # [z1_equi ; z2_equi]
    return [decoder(decoder_in) for decoder in decoders]


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

    Subclasses build `student`/`teacher`/`transform` and implement `compute_losses`; the
    reconstruction side (g_θ views, targets u_k, L_recon, logging fields) is shared here.
    """

    name: str = ""
    has_teacher: bool = False  # evaluations read the teacher's backbone when True
    cfg: Any
    student: nn.Module
    teacher: nn.Module | None
    transform: EquiTransform | None
    # (which slice, how many slices) of the global batch this process holds: (rank, world size)
    # under data parallelism. Set by the engine; only the θ draw uses it.
    batch_slice: tuple[int, int] = (0, 1)

    def train(self, mode: bool = True) -> SSLMethod:
        """As `nn.Module.train`, but the EMA teacher always stays in eval mode (no stochastic
        depth or dropout in the targets, as DINOv2)."""
        super().train(mode)
        if getattr(self, "teacher", None) is not None:
            self.teacher.eval()
        return self

    def _build_transform(self) -> EquiTransform | None:
        """g_θ of `recon.transform` at the global crop size, None when recon is off."""
        r = self.cfg.recon
        return build_transform(r.transform, self.cfg.data.global_size) if r.enabled else None

    @property
    def backbone(self) -> Backbone:
        """The student backbone (a teacher's, if any, is `self.teacher.encoder.backbone`)."""
        return self.student.encoder.backbone

    def prepare_views(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Apply g_θ to u on the batch's device: returns ([v1; v2] (2B, 3, H, W), u_k, θ)."""
        v1, u = batch.global_crops[0], batch.global_crops[1]
        if self.transform is None:
            return torch.cat([v1, u]), [], None
        # θ is drawn for the whole global batch and this rank takes its slice, so a step's θ
        # per image does not depend on how the global batch is split over ranks.
        b = u.shape[0]
        index, count = self.batch_slice
        theta = self.transform.sample(b * count, generator=generator, device=u.device)
        theta = theta[index * b : (index + 1) * b]
        v2 = self.transform.apply(u, theta)
        targets = self.transform.intermediates(u, theta, self.cfg.recon.k)
        return torch.cat([v1, v2]), targets, theta

    def finish_step(
        self,
        loss_ssl: torch.Tensor,
        terms: dict[str, torch.Tensor],
        recon_preds: list[torch.Tensor] | None,
        targets: list[torch.Tensor],
        batch: Batch,
        global_crops: torch.Tensor,
    ) -> StepOutput:
        """L_total = L_SSL + λ·L_recon and the tensors kept for the reconstruction grid.

        Args:
            loss_ssl: fp32 scalar of the base method.
            terms: detached parts of the SSL loss, for logging.
            recon_preds: K student predictions û_k (B, 3, H, W), or None without decoders.
            targets: K targets u_k from `prepare_views` ([] without g).
            batch: the step's batch (u is `batch.global_crops[1]`).
            global_crops: [v1; v2] from `prepare_views`.
        """
        loss_recon = None
        loss_total = loss_ssl
        if recon_preds and targets:
            loss_recon = recon_loss(recon_preds, targets)
            loss_total = loss_ssl + self.cfg.recon.lam * loss_recon
        b = batch.batch_size
        n = min(b, N_LOGGED_IMAGES)
        return StepOutput(
            loss_total=loss_total,
            loss_ssl=loss_ssl,
            loss_recon=loss_recon,
            terms=terms,
            recon_inputs=batch.global_crops[1][:n].detach() if targets else None,
            recon_targets=[t[:n].detach() for t in targets],
            recon_preds=[p[:n].detach() for p in recon_preds or []],
            transformed=global_crops[b : b + n].detach() if targets else None,
        )

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
        """teacher ← m·teacher + (1 − m)·student, fused over all parameters."""
        ema_update_(*self.ema_pairs(), momentum)


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """teacher ← m·teacher + (1 − m)·student in place: one fused pass (`lerp`) over all tensors."""
    if teacher:
        torch._foreach_lerp_(teacher, [p.detach() for p in student], 1.0 - momentum)


class JointEmbeddingStudent(nn.Module):
    """Shared encoder + projector on the CLS token (+ decoders): VICReg/SimCLR students.

    The representation is the CLS token of z_inv (recon on) or of the backbone (recon off).
    """

    def __init__(
        self, encoder: Encoder, projector: nn.Module, decoders: nn.ModuleList | None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.decoders = decoders

    def forward(self, global_crops: torch.Tensor) -> dict[str, Any]:
        """global_crops (2B, 3, H, W) = [v1; v2] -> {"embeddings": (2B, D'), "recon_preds"}.

        The projector runs per view (its BatchNorm statistics are per view, as in VICReg).
        """
        backbone, split = self.encoder.backbone, self.encoder.split_head
        if (
            self.decoders is None or split is None
        ):  # z_inv of CLS only: the last block skips the rest
            cls, _ = self.encoder(global_crops, rows=backbone.cls_rows(global_crops))
        else:  # the decoders read every patch token
            tokens = backbone(global_crops)
            cls = split.inv(tokens[:, 0])
        b = cls.shape[0] // 2
        out: dict[str, Any] = {
            "embeddings": torch.cat([self.projector(cls[:b]), self.projector(cls[b:])])
        }
        if self.decoders is not None and split is not None:
            prefix = backbone.num_prefix_tokens
            out["recon_preds"] = decode_views(self.decoders, split.equi(tokens[:, prefix:]), 0)
        return out


class JointEmbeddingMethod(SSLMethod):
    """Teacher-free two-view method (SIE "shared encoder" setting): one encoder, both views.

    Subclasses give the projector (`build_projector`) and the loss on the two views'
    embeddings (`embedding_loss`). Local crops are never used (nor moved through the model),
    and the backbone's mask token is frozen since these methods feed no masks.
    """

    has_teacher = False

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        encoder = build_encoder(cfg)
        encoder.backbone.mask_token.requires_grad_(False)  # unused: keep DDP/optimizer off it
        projector = self.build_projector(encoder.out_dim)
        if cfg.method.sync_batchnorm and _use_sync_batchnorm():
            projector = nn.SyncBatchNorm.convert_sync_batchnorm(projector)
        self.student = JointEmbeddingStudent(encoder, projector, build_recon_decoders(cfg, encoder))
        self.teacher = None
        self.transform = self._build_transform()

    def build_projector(self, in_dim: int) -> nn.Module:
        """MLP from the representation (in_dim) to the loss space."""
        raise NotImplementedError

    def embedding_loss(
        self, z1: torch.Tensor, z2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(fp32 scalar loss, detached terms) from the two views' embeddings (B, D')."""
        raise NotImplementedError

    def compute_losses(
        self,
        student_fn: nn.Module,
        batch: Batch,
        teacher_temp: float,
        generator: torch.Generator,
    ) -> StepOutput:
        """One student forward on [v1; v2] (local crops skipped); `teacher_temp` is unused."""
        global_crops, targets, _ = self.prepare_views(batch, generator)
        out = student_fn(global_crops)
        z1, z2 = out["embeddings"].chunk(2)
        loss_ssl, terms = self.embedding_loss(z1, z2)
        return self.finish_step(
            loss_ssl, terms, out.get("recon_preds"), targets, batch, global_crops
        )


def _use_sync_batchnorm() -> bool:
    """SyncBatchNorm only helps (and only runs) with several CUDA ranks."""
    return (
        torch.cuda.is_available()
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )
