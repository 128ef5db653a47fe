"""Sinkhorn-Knopp centering of teacher outputs (SwAV / DINOv2 style), distributed-aware."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size() -> int:
    """Number of ranks in the default process group, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_reduce(t: Tensor, op: dist.ReduceOp.RedOpType, distributed: bool) -> Tensor:
    if distributed:
        dist.all_reduce(t, op=op)
    return t


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, n_iterations: int = 3) -> Tensor:
    """Balance teacher assignments over prototypes with Sinkhorn-Knopp (as DINOv2).

    With Q = exp(logits / temperature)ᵀ (K prototypes × B samples of the global batch), each
    iteration scales every prototype row to total mass 1/K, then every sample column to 1/B;
    the result is returned with each sample's row rescaled to sum to 1. DINOv2's initial
    division by the total mass is a common factor that the first row normalization removes, so
    it is omitted here.

    Computed with scaling vectors, Q = diag(r) E diag(c): the first prototype normalization
    runs in the log domain (a log-sum-exp over the samples), then each sample row of its result
    is shifted to a maximum of 0 and exponentiated once, giving E; every further half-step is
    one matrix-vector product (c = 1 / (B · E r), r = 1 / (K · Eᵀc)) instead of passes that
    rewrite the (K, N) matrix. Every row of E holds a 1 and, after the first normalization,
    every prototype column an entry >= 1/B, so no sum is 0 and nothing overflows for any
    temperature or logit range; entries that underflow are below e^-87 of their row's maximum
    (DINOv2's plain exp overflows for logits / temperature > 88).

    When ``torch.distributed`` is initialized with more than one rank, the prototype (row) sums
    and maxima are all-reduced and B is the global number of samples (the local counts are
    all-reduced, so ranks may hold different numbers of rows). Every rank must call this
    function.

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
    if n_iterations < 1:
        raise ValueError(f"sinkhorn_knopp expects n_iterations >= 1, got {n_iterations}")
    distributed = _world_size() > 1
    n_local, n_prototypes = teacher_logits.shape

    if not distributed and n_local == 0:
        return teacher_logits.float().clone()
    # global batch size, filled on the device (no host-to-device copy, no sync).
    n_global = teacher_logits.new_full((), float(n_local), dtype=torch.float32)
    n_global = _all_reduce(n_global, dist.ReduceOp.SUM, distributed)

    x = teacher_logits.float() / temperature  # (N, K), a new tensor: updated in place below
    # First normalization of the prototypes, in the log domain: x_nk - log Σ_n exp(x_nk), over
    # the global batch (the constant log K is dropped: the sample shift below absorbs it).
    if n_local > 0:
        col_max = x.amax(dim=0)
    else:  # this rank holds no samples; the others still need its (empty) contribution
        col_max = x.new_full((n_prototypes,), float("-inf"))
    col_max = _all_reduce(col_max, dist.ReduceOp.MAX, distributed)
    col_sum = _all_reduce((x - col_max).exp_().sum(dim=0), dist.ReduceOp.SUM, distributed)
    x -= col_sum.log_().add_(col_max)
    if n_local > 0:
        x -= x.amax(dim=1, keepdim=True)  # each sample's max -> 0 (absorbed by c)
    e = x.exp_()  # E, (N, K)

    row_scale = e.new_ones(n_prototypes)  # r: the first normalization is inside E
    col_scale = (e.sum(dim=1) * n_global).reciprocal_()  # c: each sample receives mass 1/B
    for _ in range(n_iterations - 1):
        # Each prototype receives total mass 1/K over the global batch.
        row_mass = _all_reduce(col_scale @ e, dist.ReduceOp.SUM, distributed)  # (K,)
        row_scale = (row_mass * n_prototypes).reciprocal_()
        # Each sample receives total mass 1/B.
        col_scale = (e @ row_scale).mul_(n_global).reciprocal_()
    # Scale each sample to sum to 1: P = B · c_n E_nk r_k.
    return e.mul_(col_scale.mul_(n_global).unsqueeze(1)).mul_(row_scale)
