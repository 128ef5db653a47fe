"""Teacher-free two-view methods (the SIE "shared encoder" setting): what VICReg and SimCLR
share. A method of this family gives its projector and its loss on the two views' embeddings."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from data_pipeline.batch import Batch
from pretrain.methods.base import Encoder, SSLMethod, StepOutput, build_encoder
from pretrain.methods.recon import ReconBranch, global_vector, predict


class JointEmbeddingStudent(nn.Module):
    """Shared encoder + projector on the CLS token (+ decoders): VICReg/SimCLR students.

    The representation is the CLS token of z_inv (recon on) or of the backbone (recon off).
    """

    def __init__(
        self,
        encoder: Encoder,
        projector: nn.Module,
        decoders: nn.ModuleList | None,
        theta_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.decoders = decoders
        if theta_head is not None:  # the study's positive control only (no key otherwise)
            self.theta_head = theta_head

    def forward(
        self, global_crops: torch.Tensor, source: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """global_crops (2B, 3, H, W) = [v1; v2] -> {"embeddings": (2B, D'), "recon_preds",
        "theta_pred" (B, P): with the control head and `source` = u (B, 3, H, W)}.

        The projector runs per view (its BatchNorm statistics are per view, as in VICReg).
        """
        backbone, split = self.encoder.backbone, self.encoder.split_head
        theta_head = getattr(self, "theta_head", None)
        if (self.decoders is None or split is None) and theta_head is None:
            # z_inv of CLS only: the last block skips the patch rows
            cls, _ = self.encoder(global_crops, rows=backbone.cls_rows(global_crops))
        else:  # the decoders (or the control head) read every patch token
            tokens = backbone(global_crops)
            cls = tokens[:, 0] if split is None else split.inv(tokens[:, 0])
        b = cls.shape[0] // 2
        out: dict[str, Any] = {
            "embeddings": torch.cat([self.projector(cls[:b]), self.projector(cls[b:])])
        }
        prefix = backbone.num_prefix_tokens
        if self.decoders is not None and split is not None:
            out["recon_preds"] = predict(self.decoders, split, tokens, prefix)
        if theta_head is not None and source is not None:
            pooled_u = global_vector(backbone(source), prefix)
            pooled_v2 = global_vector(tokens[b:], prefix)
            out["theta_pred"] = theta_head(torch.cat([pooled_u, pooled_v2], dim=-1))
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
        theta_head = self.recon.build_theta_head(encoder.backbone.embed_dim)
        self.student = JointEmbeddingStudent(encoder, projector, decoders, theta_head)
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
        if views.source is None:
            out = student_fn(views.global_crops)
        else:  # the study's positive control: the θ head also reads f(u)
            out = student_fn(views.global_crops, views.source)
        z1, z2 = out["embeddings"].chunk(2)
        loss_ssl, terms = self.embedding_loss(z1, z2)
        loss_theta = (
            self.recon.theta_loss(out["theta_pred"], views) if "theta_pred" in out else None
        )
        return self.recon.step_output(
            loss_ssl, terms, out.get("recon_preds"), views, batch, loss_theta
        )


def _use_sync_batchnorm() -> bool:
    """SyncBatchNorm only helps (and only runs) with several CUDA ranks."""
    return (
        torch.cuda.is_available()
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )
