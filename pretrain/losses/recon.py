"""Pixel reconstruction loss of the intermediate transformed views (L_recon, DESIGN §1.7)."""

from __future__ import annotations

import torch
from torch import Tensor


def recon_loss(predictions: list[Tensor], targets: list[Tensor]) -> Tensor:
    """L_recon = 1/K Σ_k mean((û_k − u_k)²), in fp32.

    Args:
        predictions: K decoder outputs û_k, each (B, 3, H, W) in normalized input space.
        targets: K targets u_k, each (B, 3, H, W); detached (no gradient flows into them).

    Returns:
        Scalar fp32 loss.

    Raises:
        ValueError: if the lists are empty or of different lengths, or a pair's shapes differ.
    """
    if len(predictions) == 0 or len(predictions) != len(targets):
        raise ValueError(
            f"recon_loss expects as many predictions as targets (K >= 1), "
            f"got {len(predictions)} predictions and {len(targets)} targets"
        )
    total = torch.zeros((), dtype=torch.float32, device=predictions[0].device)
    for k, (prediction, target) in enumerate(zip(predictions, targets)):
        if prediction.shape != target.shape:
            raise ValueError(
                f"recon_loss: prediction {k} has shape {tuple(prediction.shape)} but target {k} "
                f"has shape {tuple(target.shape)}"
            )
        diff = prediction.float() - target.detach().float()
        total = total + (diff * diff).mean()
    return total / len(predictions)
