"""VICReg in the SIE "shared encoder" setting (Garrido et al. 2023) + reconstruction."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.losses import vicreg_loss
from pretrain.methods.base import build_mlp, register_method
from pretrain.methods.joint import JointEmbeddingMethod

EXPANDER_LAYERS = 3


@register_method("vicreg")
class VICReg(JointEmbeddingMethod):
    """VICReg on the CLS token of z_inv (recon on) or of the backbone (recon off).

    No teacher: one shared encoder sees both global views [v1; v2] in one pass. The CLS
    representation goes through a 3-layer expander (`method.expander_dim` wide, Linear-BN-ReLU
    between layers) and the VICReg loss (`method.vicreg_sim_weight` 25, `vicreg_var_weight` 25,
    `vicreg_cov_weight` 1; fp32; variance/covariance over the global batch). Local crops are
    not used. Default split: d_patch 512 / d_equi 256.
    """

    def build_projector(self, in_dim: int) -> nn.Module:
        dim = self.cfg.method.expander_dim
        return build_mlp(in_dim, dim, dim, EXPANDER_LAYERS, last_bias=False)

    def embedding_loss(
        self, z1: torch.Tensor, z2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = self.cfg.method
        terms = vicreg_loss(z1, z2, m.vicreg_sim_weight, m.vicreg_var_weight, m.vicreg_cov_weight)
        return terms.loss, {
            "invariance": terms.invariance.detach(),
            "variance": terms.variance.detach(),
            "covariance": terms.covariance.detach(),
        }
