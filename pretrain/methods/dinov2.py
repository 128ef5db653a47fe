"""DINOv2 (DINO CLS loss with Sinkhorn-Knopp + iBOT masked-patch loss + KoLeo) + reconstruction."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from data_pipeline.batch import Batch
from pretrain.losses import DINOClsLoss, IBOTPatchLoss, koleo_loss, sinkhorn_knopp
from pretrain.methods.base import (
    Encoder,
    SSLMethod,
    StepOutput,
    build_encoder,
    build_recon_decoders,
    decode_views,
    make_teacher,
    register_method,
)
from pretrain.models.heads import DINOHead


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
            out["recon_preds"] = decode_views(self.decoders, g_equi, prefix)
        return out


@register_method("dinov2")
class DINOv2(SSLMethod):
    """DINOv2 on z_inv, L_recon on z_equi (DESIGN §1). `recon.enabled=false` is plain DINOv2.

    Subclasses (iBOT) keep the student/teacher/EMA, masking and multi-crop structure and
    override how teacher targets are made (`_teacher_targets`) and the SSL loss (`_ssl_loss`).
    """

    has_teacher = True

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.method
        encoder = build_encoder(cfg)
        head = DINOHead(encoder.out_dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim)
        self.grid = cfg.data.global_size // encoder.backbone.patch_size
        self.student = DINOv2Student(encoder, head, build_recon_decoders(cfg, encoder))
        self.teacher = make_teacher(self.student)
        self.transform = self._build_transform()
        self.dino_loss = DINOClsLoss()
        self.ibot_loss = IBOTPatchLoss(average_over="all_images")  # as DINOv2 and iBOT

    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: torch.Tensor, masks: torch.Tensor, teacher_temp: float
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Teacher probabilities: ([v1 CLS (B, K), v2 CLS (B, K)], masked patches (M, K))."""
        prefix = self.teacher.encoder.backbone.num_prefix_tokens
        z_inv, _ = self.teacher.encoder(global_crops)
        cls_probs = sinkhorn_knopp(self.teacher.head(z_inv[:, 0]), teacher_temp)
        patch_probs = sinkhorn_knopp(self.teacher.head(z_inv[:, prefix:][masks]), teacher_temp)
        return list(cls_probs.chunk(2)), patch_probs

    def _cls_and_patch_losses(
        self,
        out: dict[str, Any],
        teacher_cls: list[torch.Tensor],
        teacher_patch: torch.Tensor,
        masks: torch.Tensor,
        n_local: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS loss over all student crops vs the other global view's target, masked-patch loss)."""
        temp = self.cfg.method.student_temp
        student_logits = list(out["global_logits"].chunk(2))
        if "local_logits" in out:
            student_logits += list(out["local_logits"].chunk(n_local))
        cls = self.dino_loss(student_logits, teacher_cls, temp)
        patch = self.ibot_loss(out["masked_patch_logits"], teacher_patch, masks, temp)
        return cls, patch

    def _ssl_loss(
        self,
        out: dict[str, Any],
        teacher_cls: list[torch.Tensor],
        teacher_patch: torch.Tensor,
        masks: torch.Tensor,
        n_local: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DINO CLS loss (global + local students) + iBOT patch loss + KoLeo, weighted."""
        m = self.cfg.method
        dino, ibot = self._cls_and_patch_losses(out, teacher_cls, teacher_patch, masks, n_local)
        koleo = sum(koleo_loss(c) for c in out["global_cls"].chunk(2))
        loss = m.dino_weight * dino + m.ibot_weight * ibot + m.koleo_weight * koleo
        return loss, {"dino": dino.detach(), "ibot": ibot.detach(), "koleo": koleo.detach()}

    def compute_losses(
        self,
        student_fn: nn.Module,
        batch: Batch,
        teacher_temp: float,
        generator: torch.Generator,
    ) -> StepOutput:
        """One forward of student (through `student_fn`, maybe DDP-wrapped) and teacher."""
        global_crops, targets, _ = self.prepare_views(batch, generator)
        masks = batch.masks.flatten(0, 1)  # (2B, N)
        n_local = batch.local_crops.shape[0]
        local = batch.local_crops.flatten(0, 1) if batch.local_crops.numel() else None
        teacher_cls, teacher_patch = self._teacher_targets(global_crops, masks, teacher_temp)
        out = student_fn(global_crops, masks, local)
        loss_ssl, terms = self._ssl_loss(out, teacher_cls, teacher_patch, masks, n_local)
        return self.finish_step(
            loss_ssl, terms, out.get("recon_preds"), targets, batch, global_crops
        )
