"""DINOv2 (DINO CLS loss with Sinkhorn-Knopp + iBOT masked-patch loss + KoLeo) + reconstruction."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.transforms import EquiTransform, build_transform
from pretrain.losses import DINOClsLoss, IBOTPatchLoss, koleo_loss, recon_loss, sinkhorn_knopp
from pretrain.methods.base import (
    Encoder,
    SSLMethod,
    StepOutput,
    build_decoders,
    make_teacher,
    register_method,
)
from pretrain.models.backbone import backbone_kwargs, build_backbone
from pretrain.models.heads import DINOHead, SplitHead


class DINOv2Student(nn.Module):
    """Encoder + shared DINO/iBOT head (+ decoders when reconstruction is on)."""

    def __init__(self, encoder: Encoder, head: DINOHead, decoders: nn.ModuleList | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.decoders = decoders

    def forward(
        self,
        global_crops: torch.Tensor,
        global_masks: torch.Tensor,
        local_crops: torch.Tensor | None,
    ) -> dict[str, Any]:
        """global_crops (2B, 3, H, W) = [v1; v2], global_masks (2B, N), local_crops (L·B, 3, h, w)."""
        prefix = self.encoder.backbone.num_prefix_tokens
        g_inv, g_equi = self.encoder(global_crops, global_masks)
        out: dict[str, Any] = {
            "global_cls": g_inv[:, 0],
            "global_logits": self.head(g_inv[:, 0]),
            # iBOT: head on the student's masked patch tokens only, in masks[masks] order.
            "masked_patch_logits": self.head(g_inv[:, prefix:][global_masks]),
        }
        if local_crops is not None and local_crops.shape[0] > 0:
            l_inv, _ = self.encoder(local_crops)
            out["local_logits"] = self.head(l_inv[:, 0])
        if self.decoders is not None and g_equi is not None:
            b = global_crops.shape[0] // 2
            patches = g_equi[:, prefix:]
            decoder_in = torch.cat([patches[:b], patches[b:]], dim=-1)  # [z1_equi ; z2_equi]
            out["recon_preds"] = [dec(decoder_in) for dec in self.decoders]
        return out


@register_method("dinov2")
class DINOv2(SSLMethod):
    """DINOv2 on z_inv, L_recon on z_equi (DESIGN §1). `recon.enabled=false` is plain DINOv2."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        m, r = cfg.method, cfg.recon
        backbone = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
        split_head = SplitHead(backbone.embed_dim, cfg.d_patch, cfg.d_equi) if r.enabled else None
        encoder = Encoder(backbone, split_head)
        head = DINOHead(encoder.out_dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim)
        self.grid = cfg.data.global_size // backbone.patch_size
        decoders = (
            build_decoders(r.k, cfg.d_equi, cfg.data.global_size, self.grid, r.decoder_channels)
            if r.enabled
            else None
        )
        self.student = DINOv2Student(encoder, head, decoders)
        self.teacher = make_teacher(self.student)
        self.transform: EquiTransform | None = (
            build_transform(r.transform, cfg.data.global_size) if r.enabled else None
        )
        self.dino_loss = DINOClsLoss()
        self.ibot_loss = IBOTPatchLoss(average_over="all_images")  # as DINOv2

    @property
    def backbone(self) -> nn.Module:
        """The student backbone (the teacher's is `self.teacher.encoder.backbone`)."""
        return self.student.encoder.backbone

    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: torch.Tensor, masks: torch.Tensor, teacher_temp: float
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        prefix = self.teacher.encoder.backbone.num_prefix_tokens
        z_inv, _ = self.teacher.encoder(global_crops)
        cls_probs = sinkhorn_knopp(self.teacher.head(z_inv[:, 0]), teacher_temp)
        patch_probs = sinkhorn_knopp(self.teacher.head(z_inv[:, prefix:][masks]), teacher_temp)
        return list(cls_probs.chunk(2)), patch_probs

    def prepare_views(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Apply g_θ to u on the batch's device: returns ([v1; v2], targets u_k, θ)."""
        v1, u = batch.global_crops[0], batch.global_crops[1]
        if self.transform is None:
            return torch.cat([v1, u]), [], None
        theta = self.transform.sample(u.shape[0], generator=generator, device=u.device)
        v2 = self.transform.apply(u, theta)
        targets = self.transform.intermediates(u, theta, self.cfg.recon.k)
        return torch.cat([v1, v2]), targets, theta

    def compute_losses(
        self,
        student_fn: nn.Module,
        batch: Batch,
        teacher_temp: float,
        generator: torch.Generator,
    ) -> StepOutput:
        """One forward of student (through `student_fn`, maybe DDP-wrapped) and teacher."""
        m = self.cfg.method
        b = batch.batch_size
        global_crops, targets, _ = self.prepare_views(batch, generator)
        masks = batch.masks.flatten(0, 1)  # (2B, N)
        local = batch.local_crops.flatten(0, 1) if batch.local_crops.numel() else None
        teacher_cls, teacher_patch = self._teacher_targets(global_crops, masks, teacher_temp)
        out = student_fn(global_crops, masks, local)

        student_logits = list(out["global_logits"].chunk(2))
        if "local_logits" in out:
            student_logits += list(out["local_logits"].chunk(batch.local_crops.shape[0]))
        dino = self.dino_loss(student_logits, teacher_cls, m.student_temp)
        ibot = self.ibot_loss(out["masked_patch_logits"], teacher_patch, masks, m.student_temp)
        koleo = sum(koleo_loss(c) for c in out["global_cls"].chunk(2))
        loss_ssl = m.dino_weight * dino + m.ibot_weight * ibot + m.koleo_weight * koleo
        terms = {"dino": dino.detach(), "ibot": ibot.detach(), "koleo": koleo.detach()}

        loss_recon = None
        loss_total = loss_ssl
        if self.transform is not None:
            loss_recon = recon_loss(out["recon_preds"], targets)
            loss_total = loss_ssl + self.cfg.recon.lam * loss_recon
        return StepOutput(
            loss_total=loss_total,
            loss_ssl=loss_ssl,
            loss_recon=loss_recon,
            terms=terms,
            recon_inputs=batch.global_crops[1][: min(b, 8)].detach() if targets else None,
            recon_targets=[t[:8].detach() for t in targets],
            recon_preds=[p[:8].detach() for p in out.get("recon_preds", [])],
            transformed=global_crops[b : b + min(b, 8)].detach() if targets else None,
        )
