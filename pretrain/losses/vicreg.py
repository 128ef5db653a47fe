"""VICReg loss (Bardes et al. 2022) with variance/covariance over the global batch."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def distributed_world_size() -> int:
    """Ranks of the default process group, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate (n, ...) tensors of every rank in rank order -> (world·n, ...), with gradient.

    The backward all-reduces (sums) the gradient of the gathered tensor, so a loss computed on
    the gathered batch by every rank, then averaged over ranks by DDP, yields exactly the
    single-process gradient. All ranks must pass the same shape. Identity without a group.
    """
    if distributed_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class VICRegTerms(NamedTuple):
    """The weighted total and its three unweighted parts (fp32 scalars)."""

    loss: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def _variance_covariance(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Hinge on the per-feature std (γ = 1) and the scaled off-diagonal covariance of (N, D)."""
    n, d = z.shape
    centered = z - z.mean(dim=0)
    denom = max(n - 1, 1)  # unbiased; a single row gives zero variance, not NaN
    std = torch.sqrt((centered * centered).sum(dim=0) / denom + eps)
    variance = F.relu(1.0 - std).mean()
    cov = (centered.t() @ centered) / denom
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    covariance = (off_diagonal * off_diagonal).sum() / d
    return variance, covariance


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> VICRegTerms:
    """VICReg loss of two views' embeddings, computed in fp32 (autocast disabled inside).

    invariance = mean((z1 − z2)²) on this rank's rows; variance = ½ Σ_views mean_d
    relu(1 − sqrt(var_d + eps)); covariance = Σ_views Σ_{i≠j} cov_ij² / D. Variance and
    covariance use the global batch (``gather_with_grad`` when distributed and ``gather``), as
    the official implementation; the mean of the per-rank losses is then the full-batch loss.

    Args:
        z1: (B, D) expander outputs of view 1.
        z2: (B, D) expander outputs of view 2 (same rows = same images).
        sim_weight: weight of the invariance term (λ).
        var_weight: weight of the variance term (μ).
        cov_weight: weight of the covariance term (ν).
        eps: added to the variance under the square root.
        gather: gather across ranks for variance/covariance when distributed.

    Returns:
        VICRegTerms(loss, invariance, variance, covariance).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"vicreg_loss expects two (B, D) tensors of the same shape, "
            f"got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    with torch.autocast(z1.device.type, enabled=False):  # fp32 even inside bf16 autocast
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        if gather:
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        var1, cov1 = _variance_covariance(z1, eps)
        var2, cov2 = _variance_covariance(z2, eps)
        variance = (var1 + var2) / 2
        covariance = cov1 + cov2
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return VICRegTerms(loss, invariance, variance, covariance)
