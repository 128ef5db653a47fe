"""NT-Xent, SimCLR's normalized-temperature cross-entropy, with negatives from every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from pretrain.losses.vicreg import distributed_world_size, gather_with_grad


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """SimCLR loss over two views, computed in fp32 (autocast disabled inside).

    Every one of the 2B local embeddings is an anchor; its positive is the other view of the
    same image, its negatives are the other 2N − 2 embeddings of the global batch (N images
    over all ranks, both views). With cosine similarities s and temperature τ:

        loss = mean_anchors −log( exp(s_pos/τ) / Σ_{j ≠ anchor} exp(s_j/τ) ).

    When distributed (and ``gather``), the columns are gathered with gradient and the rows
    are this rank's anchors, so the mean of the per-rank losses is the full-batch loss and
    DDP's averaged gradient is the full-batch gradient. Ranks must hold equally many rows.
    A batch of one image (no negatives) gives a finite loss of 0.

    Args:
        z1: (B, D) projections of view 1.
        z2: (B, D) projections of view 2 (same rows = same images).
        temperature: τ > 0.
        gather: use the other ranks' embeddings as negatives when distributed.

    Returns:
        Scalar fp32 loss.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent_loss expects two (B, D) tensors of the same shape, "
            f"got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"nt_xent_loss expects temperature > 0, got {temperature}")
    with torch.autocast(z1.device.type, enabled=False):  # fp32 even inside bf16 autocast
        return _nt_xent(z1.float(), z2.float(), temperature, gather)


def _nt_xent(z1: Tensor, z2: Tensor, temperature: float, gather: bool) -> Tensor:
    """nt_xent_loss on fp32 inputs, outside autocast."""
    b = z1.shape[0]
    z1 = F.normalize(z1, dim=-1, eps=1e-8)
    z2 = F.normalize(z2, dim=-1, eps=1e-8)
    world = distributed_world_size() if gather else 1
    offset = dist.get_rank() * b if world > 1 else 0
    if world > 1:
        c1, c2 = gather_with_grad(z1), gather_with_grad(z2)
    else:
        c1, c2 = z1, z2
    n = c1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([c1, c2]).t() / temperature  # (2B, 2N)
    rows = torch.arange(2 * b, device=logits.device)
    own = torch.arange(b, device=logits.device) + offset
    self_col = torch.cat([own, own + n])
    positive_col = torch.cat([own + n, own])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_col] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, positive_col)
