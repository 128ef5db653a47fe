"""Kozachenko-Leonenko differential-entropy regularizer (Sablayrolles et al. 2018, DINOv2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo loss: −mean_i log(‖x̂_i − x̂_nn(i)‖ + eps) over L2-normalized rows x̂.

    nn(i) is the nearest other row (largest cosine similarity, self excluded). The distance is
    computed as sqrt(‖x̂_i − x̂_nn‖² + eps²), so duplicate rows give a finite loss (about
    −log(2·eps)) and finite (zero) gradients; DINOv2 instead adds eps to each coordinate of the
    difference. Computed in fp32.

    Args:
        x: (B, D) features, any float dtype.
        eps: guard for the normalization, the distance and the log.

    Returns:
        Scalar fp32 loss; a graph-connected zero when B < 2.
    """
    if x.ndim != 2:
        raise ValueError(f"koleo_loss expects x of shape (B, D), got {tuple(x.shape)}")
    x = x.float()
    if x.shape[0] < 2:
        return x.sum() * 0.0
    x = F.normalize(x, p=2, dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)  # below any cosine similarity: never pick self
        nearest = similarity.argmax(dim=1)
    diff = x - x[nearest]
    distance = torch.sqrt((diff * diff).sum(dim=-1) + eps * eps)
    return -torch.log(distance + eps).mean()
