"""SimCLR (Chen et al. 2020) with NT-Xent over the two global views + reconstruction."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.losses import nt_xent_loss
from pretrain.methods.base import build_mlp, register_method
from pretrain.methods.joint import JointEmbeddingMethod

PROJECTOR_LAYERS = 2


@register_method("simclr")
class SimCLR(JointEmbeddingMethod):
    """SimCLR on the CLS token of z_inv (recon on) or of the backbone (recon off).

    No teacher: one shared encoder sees both global views [v1; v2] in one pass. The CLS
    representation goes through a projector (Linear(`method.projector_hidden_dim`)-BN-ReLU-
    Linear(`method.projector_dim`)) and NT-Xent at `method.simclr_temperature` (fp32;
    negatives gathered from every rank). Local crops are not used. Default split 512 / 256.
    """

    def build_projector(self, in_dim: int) -> nn.Module:
        m = self.cfg.method
        return build_mlp(in_dim, m.projector_hidden_dim, m.projector_dim, PROJECTOR_LAYERS)

    def embedding_loss(
        self, z1: torch.Tensor, z2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = nt_xent_loss(z1, z2, self.cfg.method.simclr_temperature)
        return loss, {"nt_xent": loss.detach()}
