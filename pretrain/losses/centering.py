"""Running-mean centering of teacher outputs (DINO / iBOT), distributed-aware."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class RunningCenter(nn.Module):
    """An EMA of the mean teacher logits, subtracted before the teacher softmax.

    ``center`` is a (1, K) fp32 buffer (so it is saved in checkpoints); it starts at zero and
    ``update`` moves it as ``center ← m·center + (1 − m)·mean(logits)``, the mean being over
    every row of the global batch (the sums and counts are all-reduced when
    ``torch.distributed`` has more than one rank; every rank must then call ``update``).

    Args:
        dim: K, the number of logits.
        momentum: m in [0, 1).
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"center momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def probs(self, logits: Tensor, temperature: float) -> Tensor:
        """softmax((logits − center) / temperature): (..., K) any float -> (..., K) fp32."""
        if temperature <= 0:
            raise ValueError(f"teacher temperature must be > 0, got {temperature}")
        return F.softmax((logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, logits: Tensor) -> None:
        """Move the center toward the global-batch mean of `logits` (..., K)."""
        rows = logits.detach().float().reshape(-1, logits.shape[-1])
        stats = torch.cat([rows.sum(dim=0), rows.new_full((1,), float(rows.shape[0]))])
        if _distributed():
            dist.all_reduce(stats)
        total, count = stats[:-1], stats[-1]
        mean = (total / count.clamp_min(1.0)).unsqueeze(0)
        new = self.center * self.momentum + mean * (1.0 - self.momentum)
        self.center.copy_(torch.where(count > 0, new, self.center))
