"""DINOv2 (DINO CLS loss with Sinkhorn-Knopp + iBOT masked-patch loss + KoLeo) + reconstruction."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from data_pipeline.batch import Batch
from pretrain.losses import DINOClsLoss, IBOTPatchLoss, RunningCenter, koleo_loss, sinkhorn_knopp
from pretrain.methods.base import (
    Encoder,
    SSLMethod,
    StepOutput,
    build_encoder,
    make_teacher,
    register_method,
)
from pretrain.methods.recon import ReconBranch, predict
from pretrain.models.backbone import Backbone
from pretrain.models.heads import DINOHead


def head_rows(backbone: Backbone, images: torch.Tensor, mask_indices: torch.Tensor) -> torch.Tensor:
    """Positions of the tokens the heads read, in the (n·L) flattened backbone output:
    [every image's CLS (n); the masked patches (M), in ``masks[masks]`` order].

    Args:
        backbone: the network (prefix tokens P, L = P + N tokens per image).
        images: (n, 3, H, W) global crops.
        mask_indices: (M,) positions in the (n, N) patch masks flattened.
    """
    length = backbone.num_tokens(images)
    n_patches = length - backbone.num_prefix_tokens
    image = torch.div(mask_indices, n_patches, rounding_mode="floor")
    masked = image * length + backbone.num_prefix_tokens + mask_indices % n_patches
    return torch.cat([backbone.cls_rows(images), masked])


class DINOv2Student(nn.Module):
    """Encoder + shared DINO/iBOT head (+ decoders when reconstruction is on).

    One backbone call per crop size and ONE head call per step: the head's rows are
    [global CLS (2B); local CLS (L·B); masked global patches (M)], so the weight-normalized
    prototypes are normalized (and back-propagated through) once. The split head projects only
    the rows that are read: z_inv of those head rows, z_equi of the global patch tokens. Where
    only the head rows are read (local crops; global crops without decoders), the backbone's
    last block computes just those tokens (`Backbone.forward(..., rows=...)`).
    """

    def __init__(
        self,
        encoder: Encoder,
        head: DINOHead,
        decoders: nn.ModuleList | None,
        student_temp: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.decoders = decoders
        self.student_temp = student_temp  # the logits come out divided by it

    def forward(
        self,
        global_crops: torch.Tensor,
        global_masks: torch.Tensor,
        local_crops: torch.Tensor | None,
        mask_indices: torch.Tensor,
    ) -> dict[str, Any]:
        """Student outputs of one step.

        Args:
            global_crops: (2B, 3, H, W) = [v1; v2].
            global_masks: (2B, N) bool iBOT masks.
            local_crops: (L·B, 3, h, w), or None.
            mask_indices: (M,) positions of the masked patches in ``global_masks.view(-1)``.

        Returns:
            ``global_cls`` (2B, d) KoLeo input; ``crop_logits`` (2 + L, B, K) of the global
            then local CLS tokens; ``masked_patch_logits`` (M, K), both divided by the student
            temperature; ``recon_preds`` (K decoders' û_k) when reconstruction is on.
        """
        backbone, split = self.encoder.backbone, self.encoder.split_head
        n_global = global_crops.shape[0]
        rows = head_rows(backbone, global_crops, mask_indices)  # [CLS (2B); masked (M)]
        decoders = self.decoders if split is not None else None
        if decoders is None:  # the heads read these rows only: the last block skips the rest
            global_rows = backbone(global_crops, global_masks, rows=rows)
        else:  # the decoders read every patch token
            tokens = backbone(global_crops, global_masks)  # (2B, P + N, D)
            global_rows = tokens.flatten(0, 1).index_select(0, rows)
        parts = [global_rows[:n_global]]
        if local_crops is not None and local_crops.shape[0] > 0:
            parts.append(backbone(local_crops, rows=backbone.cls_rows(local_crops)))
        parts.append(global_rows[n_global:])
        n_cls = n_global + (parts[1].shape[0] if len(parts) == 3 else 0)
        z_inv = torch.cat(parts)  # [global CLS; local CLS; masked patches]
        if split is not None:
            z_inv = split.inv(z_inv)
        logits = self.head(z_inv, scale=1.0 / self.student_temp)
        out: dict[str, Any] = {
            "global_cls": z_inv[:n_global],
            "crop_logits": logits[:n_cls].unflatten(0, (-1, n_global // 2)),
            "masked_patch_logits": logits[n_cls:],
        }
        if decoders is not None:
            out["recon_preds"] = predict(decoders, split, tokens, backbone.num_prefix_tokens)
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
        self.recon = ReconBranch(cfg)
        encoder = build_encoder(cfg, self.recon)
        head = DINOHead(
            encoder.out_dim,
            m.head_out_dim,
            m.head_hidden_dim,
            m.head_bottleneck_dim,
            norm_last_layer=m.norm_last_layer is not False,
        )
        self.grid = cfg.data.global_size // encoder.backbone.patch_size
        decoders = self.recon.build_decoders(encoder.backbone.patch_size)
        self.student = DINOv2Student(encoder, head, decoders, m.student_temp)
        self.teacher = make_teacher(self.student)
        if m.centering == "centering":  # running means of the teacher's CLS / masked-patch logits
            self.teacher.add_module("cls_center", RunningCenter(m.head_out_dim, m.center_momentum))
            self.teacher.add_module(
                "patch_center", RunningCenter(m.head_out_dim, m.center_momentum)
            )
        self.dino_loss = DINOClsLoss()
        self.ibot_loss = IBOTPatchLoss(average_over="all_images")  # as DINOv2 and iBOT

    @torch.no_grad()
    def _teacher_targets(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor,
        mask_indices: torch.Tensor,
        teacher_temp: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher probabilities: ((2, B, K) of the v1/v2 CLS, (M, K) of the masked patches).

        One head call on [CLS (2B); masked patches (M)]; Sinkhorn-Knopp on each part, or with
        `method.centering=centering` (DINOv2's `train.centering: centering`) a softmax around
        running centers (`teacher.cls_center`, `teacher.patch_center`; momentum
        `method.center_momentum`), updated after the step's targets from the CLS and the
        masked-patch logits of the global batch.
        """
        encoder = self.teacher.encoder  # called as a module: an FSDP2 root of its own
        rows = head_rows(encoder.backbone, global_crops, mask_indices)
        logits = self.teacher.head(encoder(global_crops, rows=rows)[0])
        n = global_crops.shape[0]
        if self.cfg.method.centering == "centering":
            teacher = self.teacher
            cls_probs = teacher.cls_center.probs(logits[:n], teacher_temp)
            patch_probs = teacher.patch_center.probs(logits[n:], teacher_temp)
            teacher.cls_center.update(logits[:n])
            teacher.patch_center.update(logits[n:])
            return cls_probs.unflatten(0, (2, -1)), patch_probs
        cls_probs = sinkhorn_knopp(logits[:n], teacher_temp)
        patch_probs = sinkhorn_knopp(logits[n:], teacher_temp)
        return cls_probs.unflatten(0, (2, -1)), patch_probs

    def _cls_and_patch_losses(
        self,
        out: dict[str, Any],
        teacher_cls: torch.Tensor,
        teacher_patch: torch.Tensor,
        masks: torch.Tensor,
        mask_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS loss over all student crops vs the other global view's target, masked-patch loss)."""
        # The student's logits are already divided by its temperature (`DINOv2Student`).
        cls = self.dino_loss(out["crop_logits"], teacher_cls, 1.0)
        patch = self.ibot_loss(out["masked_patch_logits"], teacher_patch, masks, 1.0, mask_indices)
        return cls, patch

    def _ssl_loss(
        self,
        out: dict[str, Any],
        teacher_cls: torch.Tensor,
        teacher_patch: torch.Tensor,
        masks: torch.Tensor,
        mask_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DINO CLS loss (global + local students) + iBOT patch loss + KoLeo, weighted."""
        m = self.cfg.method
        dino, ibot = self._cls_and_patch_losses(
            out, teacher_cls, teacher_patch, masks, mask_indices
        )
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
        views = self.recon.views(batch, generator)
        global_crops = views.global_crops
        masks = batch.masks.flatten(0, 1)  # (2B, N)
        mask_indices = batch.masked_positions()
        local = batch.local_crops.flatten(0, 1) if batch.local_crops.numel() else None
        teacher_cls, teacher_patch = self._teacher_targets(
            global_crops, masks, mask_indices, teacher_temp
        )
        out = student_fn(global_crops, masks, local, mask_indices)
        loss_ssl, terms = self._ssl_loss(out, teacher_cls, teacher_patch, masks, mask_indices)
        return self.recon.step_output(loss_ssl, terms, out.get("recon_preds"), views, batch)
