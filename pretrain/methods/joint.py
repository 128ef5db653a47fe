"""Teacher-free two-view methods (the SIE "shared encoder" setting): what VICReg and SimCLR
share. A method of this family gives its projector and its loss on the two views' embeddings."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from data_pipeline.batch import Batch
from pretrain.methods.base import Encoder, SSLMethod, StepOutput, build_encoder
from pretrain.methods.recon import ReconBranch, predict


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
        if self.decoders is None or split is None:  # z_inv of CLS only: the last block skips
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
            out["recon_preds"] = predict(self.decoders, split, tokens, prefix)
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
        self.recon = ReconBranch(cfg)
        encoder = build_encoder(cfg, self.recon)
        encoder.backbone.mask_token.requires_grad_(False)  # unused: keep DDP/optimizer off it
        projector = self.build_projector(encoder.out_dim)
        if cfg.method.sync_batchnorm and _use_sync_batchnorm():
            projector = nn.SyncBatchNorm.convert_sync_batchnorm(projector)
        decoders = self.recon.build_decoders(encoder.backbone.patch_size)
        self.student = JointEmbeddingStudent(encoder, projector, decoders)
        self.teacher = None

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
        views = self.recon.views(batch, generator)
        out = student_fn(views.global_crops)
        z1, z2 = out["embeddings"].chunk(2)
        loss_ssl, terms = self.embedding_loss(z1, z2)
        return self.recon.step_output(loss_ssl, terms, out.get("recon_preds"), views, batch)


def _use_sync_batchnorm() -> bool:
    """SyncBatchNorm only helps (and only runs) with several CUDA ranks."""
    return (
        torch.cuda.is_available()
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )
