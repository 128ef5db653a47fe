"""iBOT (Zhou et al. 2022): DINO CLS loss + masked-patch self-distillation, centered teacher."""

from __future__ import annotations

from typing import Any

import torch

from pretrain.losses import RunningCenter
from pretrain.methods.base import register_method
from pretrain.methods.dinov2 import DINOv2


@register_method("ibot")
class IBOT(DINOv2):
    """iBOT on z_inv, L_recon on z_equi. `recon.enabled=false` is plain iBOT.

    Same student/teacher/EMA, block masking, multi-crop and shared head (CLS and patch tokens,
    `method.head_out_dim` prototypes) as DINOv2 here, but the teacher's outputs are centered with
    running means instead of Sinkhorn-Knopp, and there is no KoLeo:

    - teacher probabilities = softmax((logits − center) / teacher_temp), one center for CLS
      logits and one for patch logits (iBOT's ``center`` / ``center2``); both are buffers of
      the teacher (``teacher.cls_center.center``, ``teacher.patch_center.center``, saved in
      checkpoints), updated with momentum `method.center_momentum` from the batch mean of the
      teacher logits (all CLS tokens; all patch tokens), all-reduced across ranks, after the
      targets of the step are made;
    - CLS loss: every student crop (globals, then locals) against every teacher global crop of
      a different view (`method.dino_weight`);
    - patch loss: masked patches of a global view against the teacher's patches of the same
      view, mean per image, averaged over all images (`method.ibot_weight`).

    The scheduled teacher temperature is used for both CLS and patch targets.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        m = cfg.method
        self.teacher.add_module("cls_center", RunningCenter(m.head_out_dim, m.center_momentum))
        self.teacher.add_module("patch_center", RunningCenter(m.head_out_dim, m.center_momentum))

    @torch.no_grad()
    def _teacher_targets(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor,
        mask_indices: torch.Tensor,
        teacher_temp: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centered teacher probabilities ((2, B, K) of the v1/v2 CLS, (M, K) masked patches).

        One head call on [CLS (2B); every patch (2B·N)] (the patch center is the mean over all
        patches, as iBOT). Also updates both centers with this step's teacher logits.
        """
        teacher = self.teacher
        backbone = teacher.encoder.backbone
        n, length = global_crops.shape[0], backbone.num_tokens(global_crops)
        patches = torch.arange(n * length, device=global_crops.device).view(n, length)
        rows = torch.cat(
            [backbone.cls_rows(global_crops), patches[:, backbone.num_prefix_tokens :].flatten()]
        )
        logits = teacher.head(teacher.encoder(global_crops, rows=rows)[0])  # [CLS; all patches]
        cls_logits = logits[:n]  # (2B, K)
        patch_logits = logits[n:].unflatten(0, (n, -1))  # (2B, N, K)
        cls_probs = teacher.cls_center.probs(cls_logits, teacher_temp)
        patch_probs = teacher.patch_center.probs(
            logits[n:].index_select(0, mask_indices), teacher_temp
        )
        teacher.cls_center.update(cls_logits)
        teacher.patch_center.update(patch_logits)
        return cls_probs.unflatten(0, (2, -1)), patch_probs

    def _ssl_loss(
        self,
        out: dict[str, Any],
        teacher_cls: torch.Tensor,
        teacher_patch: torch.Tensor,
        masks: torch.Tensor,
        mask_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """iBOT: weighted CLS (DINO) loss + masked-patch loss; no KoLeo."""
        m = self.cfg.method
        cls, patch = self._cls_and_patch_losses(
            out, teacher_cls, teacher_patch, masks, mask_indices
        )
        loss = m.dino_weight * cls + m.ibot_weight * patch
        return loss, {"cls": cls.detach(), "patch": patch.detach()}
