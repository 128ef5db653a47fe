"""Losses of the pretraining methods and the reconstruction objective (torch only)."""

from pretrain.losses.centering import RunningCenter
from pretrain.losses.dino_clstoken import DINOClsLoss
from pretrain.losses.ibot_patch import IBOTPatchLoss
from pretrain.losses.koleo import koleo_loss
from pretrain.losses.ntxent import nt_xent_loss
from pretrain.losses.recon import recon_loss
from pretrain.losses.sinkhorn import sinkhorn_knopp
from pretrain.losses.vicreg import VICRegTerms, gather_with_grad, vicreg_loss

__all__ = [
    "DINOClsLoss",
    "IBOTPatchLoss",
    "RunningCenter",
    "VICRegTerms",
    "gather_with_grad",
    "koleo_loss",
    "nt_xent_loss",
    "recon_loss",
    "sinkhorn_knopp",
    "vicreg_loss",
]
