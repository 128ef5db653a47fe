"""The reconstruction branch (DESIGN §1.2–1.7) as one component that every base method composes.

A base method holds one `ReconBranch` (``method.recon``) and uses it three times per step:

1. ``views = recon.views(batch, generator)``: g_θ applied to u on the batch's device, the K
   intermediate targets u_k = g_{kθ/(K+1)}(u), and the two global views ``[v1; v2]`` the SSL
   loss sees;
2. inside the student's forward (the one call DDP/FSDP wrap), ``predict(decoders, split_head,
   tokens, P)``: the split head's equivariant slice z_equi of the patch tokens of [v1; v2],
   concatenated per patch, through the K decoders -> û_k;
3. ``recon.step_output(loss_ssl, terms, preds, views, batch)``: L_total = L_SSL + λ·L_recon and
   the tensors kept for the reconstruction grid.

At build time it makes the split head (`build_split_head`) and the decoders (`build_decoders`);
the method places them where checkpoints expect them (``student.encoder.split_head``,
``student.decoders``). With ``recon.enabled=false`` there is no split head, no decoders and no
g: the views are ``[v1; u]`` and the loss is L_SSL, i.e. the plain base method.

``recon.fill=disk`` (a study option, not the paper's) masks v1, u, v2 and the targets to the disk
inscribed in the crop, so that no view shows the zero fill's θ-dependent shape and θ can only
be told from the content (data_pipeline/transforms/fill.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.transforms import EquiTransform, build_transform
from data_pipeline.transforms.fill import hide_fill
from pretrain.losses import recon_loss
from pretrain.methods.step_output import N_LOGGED_IMAGES, StepOutput
from pretrain.models.decoder import ReconDecoder
from pretrain.models.heads import SplitHead


class ReconViews(NamedTuple):
    """The global views of one step and the reconstruction targets."""

    global_crops: torch.Tensor  # (2B, 3, H, W) = [v1; v2] ([v1; u] without g)
    targets: list[torch.Tensor]  # K targets u_k (B, 3, H, W); [] without g
    theta: torch.Tensor | None  # (B, P) this rank's θ; None without g
    source: torch.Tensor | None = None  # (B, 3, H, W) u, for the θ control head; else None


def global_vector(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """[CLS; mean of the patch tokens] (B, 2D) of backbone tokens (B, P + N, D): the vector the
    study's equivariance probe reads (`eval.equivariance.features=global`)."""
    return torch.cat([tokens[:, 0], tokens[:, num_prefix_tokens:].mean(dim=1)], dim=-1)


def build_theta_head(embed_dim: int, num_params: int, hidden: int = 256) -> nn.Module:
    """The positive control's head: [global f(u); global f(g_θ u)] (4D) -> normalized θ (P)."""
    return nn.Sequential(nn.Linear(4 * embed_dim, hidden), nn.GELU(), nn.Linear(hidden, num_params))


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


def predict(
    decoders: nn.ModuleList, split_head: SplitHead, tokens: torch.Tensor, num_prefix_tokens: int
) -> list[torch.Tensor]:
    """û_k from the student's backbone tokens of [v1; v2] (2B, P + N, D): the split head's
    equivariant slice of the patch tokens only, then the decoders (called in the student's
    forward, so that DDP/FSDP see one student call per step)."""
    return decode_views(decoders, split_head.equi(tokens[:, num_prefix_tokens:]), 0)


class ReconBranch:
    """g_θ, the targets u_k, the split head and decoders of `recon.*`, and L_recon.

    A plain object (no parameters of its own: the split head and decoders it builds live in the
    student). `batch_slice` is (rank, world size) under data parallelism, set by the engine
    through `SSLMethod.batch_slice`; only the θ draw uses it.
    """

    def __init__(self, cfg: Any) -> None:
        r = cfg.recon
        self.enabled = bool(r.enabled)
        self.k, self.lam = r.k, r.lam
        self.image_size = cfg.data.global_size
        self.d_patch, self.d_equi = cfg.d_patch, cfg.d_equi
        self.decoder_channels = r.decoder_channels
        self.decoder_resize, self.decoder_kernel = r.decoder_resize, r.decoder_kernel
        self.transform: EquiTransform | None = (
            build_transform(r.transform, self.image_size) if self.enabled else None
        )
        self.batch_slice: tuple[int, int] = (0, 1)
        self.theta_weight = float(r.theta_head_weight)
        self.fill = str(r.fill)

    # ---- build time -----------------------------------------------------------------------
    def build_split_head(self, embed_dim: int) -> SplitHead | None:
        """The split head D -> d_patch on the backbone tokens, None when recon is off."""
        return SplitHead(embed_dim, self.d_patch, self.d_equi) if self.enabled else None

    def build_decoders(self, patch_size: int) -> nn.ModuleList | None:
        """The K decoders for a backbone of this patch size, None when recon is off."""
        if not self.enabled:
            return None
        grid = self.image_size // patch_size
        return build_decoders(
            self.k,
            self.d_equi,
            self.image_size,
            grid,
            self.decoder_channels,
            self.decoder_resize,
            self.decoder_kernel,
        )

    def build_theta_head(self, embed_dim: int) -> nn.Module | None:
        """The study's positive-control head (`recon.theta_head_weight` > 0), else None."""
        if self.transform is None or self.theta_weight <= 0:
            return None
        return build_theta_head(embed_dim, self.transform.num_params)

    def theta_loss(self, theta_pred: torch.Tensor, views: ReconViews) -> torch.Tensor:
        """MSE of the control head's prediction against θ normalized to [-1, 1] (fp32)."""
        assert self.transform is not None and views.theta is not None
        target = self.transform.normalize_params(views.theta).float()
        return (theta_pred.float() - target).pow(2).mean()

    # ---- one step -------------------------------------------------------------------------
    def views(self, batch: Batch, generator: torch.Generator) -> ReconViews:
        """Apply g_θ to u = `batch.global_crops[1]` on the batch's device."""
        v1, u = batch.global_crops[0], batch.global_crops[1]
        if self.transform is None:
            return ReconViews(torch.cat([v1, u]), [], None)
        # θ is drawn for the whole global batch and this rank takes its slice, so a step's θ
        # per image does not depend on how the global batch is split over ranks.
        b = u.shape[0]
        index, count = self.batch_slice
        theta = self.transform.sample(b * count, generator=generator, device=u.device)
        theta = theta[index * b : (index + 1) * b]
        v2 = self.transform.apply(u, theta)
        targets = self.transform.intermediates(u, theta, self.k)
        if self.fill == "disk":  # θ from the content only: no view shows the fill's shape
            v1, u, v2, *targets = hide_fill(self.transform, [v1, u, v2, *targets])
        source = u if self.theta_weight > 0 else None
        return ReconViews(torch.cat([v1, v2]), targets, theta, source)

    def step_output(
        self,
        loss_ssl: torch.Tensor,
        terms: dict[str, torch.Tensor],
        preds: list[torch.Tensor] | None,
        views: ReconViews,
        batch: Batch,
        loss_theta: torch.Tensor | None = None,
    ) -> StepOutput:
        """L_total = L_SSL + λ·L_recon (+ w·L_θ of the study's control) and the tensors kept for
        the reconstruction grid.

        Args:
            loss_ssl: fp32 scalar of the base method.
            terms: detached parts of the SSL loss, for logging.
            preds: K student predictions û_k (B, 3, H, W), or None without decoders.
            views: this step's `views(...)`.
            batch: the step's batch (u is `batch.global_crops[1]`).
            loss_theta: the positive control's loss (`theta_loss`), or None (the method).
        """
        targets = views.targets
        loss_recon = None
        loss_total = loss_ssl
        if preds and targets:
            loss_recon = recon_loss(preds, targets)
            loss_total = loss_ssl + self.lam * loss_recon
        if loss_theta is not None:
            terms = {**terms, "theta_control": loss_theta.detach()}
            loss_total = loss_total + self.theta_weight * loss_theta
        b = batch.batch_size
        n = min(b, N_LOGGED_IMAGES)
        return StepOutput(
            loss_total=loss_total,
            loss_ssl=loss_ssl,
            loss_recon=loss_recon,
            terms=terms,
            recon_inputs=batch.global_crops[1][:n].detach() if targets else None,
            recon_targets=[t[:n].detach() for t in targets],
            recon_preds=[p[:n].detach() for p in preds or []],
            transformed=views.global_crops[b : b + n].detach() if targets else None,
        )
