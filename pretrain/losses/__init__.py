"""Losses of the pretraining methods and the reconstruction objective (torch only)."""

from pretrain.losses.dino_clstoken import DINOClsLoss
from pretrain.losses.ibot_patch import IBOTPatchLoss
from pretrain.losses.koleo import koleo_loss
from pretrain.losses.recon import recon_loss
from pretrain.losses.sinkhorn import sinkhorn_knopp

__all__ = ["DINOClsLoss", "IBOTPatchLoss", "koleo_loss", "recon_loss", "sinkhorn_knopp"]
