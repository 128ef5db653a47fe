"""Sinkhorn-Knopp centering of teacher outputs (SwAV / DINOv2 style), distributed-aware."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size() -> int:
    """Number of ranks in the default process group, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _global_logsumexp_over_samples(log_q: Tensor, distributed: bool) -> Tensor:
    """Log of the per-prototype mass, summed over the samples of every rank.

    Args:
        log_q: (K, N) log-weights of this rank's samples.
        distributed: whether to reduce over all ranks.

    Returns:
        (K, 1) log of Σ_samples exp(log_q), over the global batch.
    """
    if log_q.shape[1] > 0:
        row_max = log_q.amax(dim=1, keepdim=True)
    else:  # this rank holds no samples; the others still need its (empty) contribution
        row_max = log_q.new_full((log_q.shape[0], 1), float("-inf"))
    if distributed:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
    row_sum = torch.exp(log_q - row_max).sum(dim=1, keepdim=True)
    if distributed:
        dist.all_reduce(row_sum, op=dist.ReduceOp.SUM)
    return row_max + torch.log(row_sum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, n_iterations: int = 3) -> Tensor:
    """Balance teacher assignments over prototypes with Sinkhorn-Knopp (as DINOv2).

    With Q = exp(logits / temperature)ᵀ (K prototypes × B samples of the global batch), each
    iteration scales every prototype row to total mass 1/K, then every sample column to 1/B;
    the result is returned with each sample's row rescaled to sum to 1. The iterations run in the
    log domain (log-sum-exp with the max subtracted), which gives DINOv2's numbers in exact
    arithmetic but stays finite for any temperature and logit range. DINOv2's initial division by
    the total mass is a common factor that the first row normalization removes, so it is
    omitted here.

    When ``torch.distributed`` is initialized with more than one rank, the prototype (row) sums
    are all-reduced and B is the global number of samples (the local counts are all-reduced, so
    ranks may hold different numbers of rows). Every rank must call this function.

    Args:
        teacher_logits: (N, K) teacher head outputs of this rank's samples, any float dtype.
        temperature: teacher temperature (> 0).
        n_iterations: number of row/column normalization rounds.

    Returns:
        (N, K) fp32 assignment probabilities; each row sums to 1.
    """
    if teacher_logits.ndim != 2:
        raise ValueError(
            "sinkhorn_knopp expects teacher_logits of shape (N, K), "
            f"got {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"sinkhorn_knopp expects temperature > 0, got {temperature}")
    distributed = _world_size() > 1
    n_local, n_prototypes = teacher_logits.shape

    if not distributed and n_local == 0:
        return teacher_logits.float().clone()
    # log of the global batch size, kept on device (no host sync).
    log_b = torch.tensor(float(n_local), device=teacher_logits.device)
    if distributed:
        dist.all_reduce(log_b, op=dist.ReduceOp.SUM)
    log_b = torch.log(log_b)
    log_k = math.log(n_prototypes)

    log_q = (teacher_logits.float() / temperature).t()  # (K, N)
    for _ in range(n_iterations):
        # Each prototype (row) receives total mass 1/K over the global batch.
        # (Scalars are folded into the (K, 1) / (1, N) vectors: one pass over log_q each.)
        log_q = log_q - (_global_logsumexp_over_samples(log_q, distributed) + log_k)
        # Each sample (column) receives total mass 1/B.
        log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + log_b)
    # Scale columns to sum to 1 so that every sample holds a probability vector.
    return log_q.add_(log_b).exp_().t().contiguous()
