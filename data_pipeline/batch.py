"""The batch structure every reader produces (torch and DALI alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ImageNet statistics; crops are normalized with them, and every loss/target lives in that space.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    """One multi-crop batch.

    Attributes:
        global_crops: (2, B, 3, Hg, Wg) float32, normalized. Index 0 is v1 = A1(I), index 1 is
            u = A2(I) (the equivariance transform g is applied later, on the training device).
        local_crops: (L, B, 3, Hl, Wl) float32, normalized; L may be 0.
        masks: (2, B, N) bool iBOT masks for the two global crops (N patches per crop), True = masked.
        labels: (B,) int64 or None.
    """

    global_crops: torch.Tensor
    local_crops: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.global_crops.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            global_crops=move(self.global_crops),
            local_crops=move(self.local_crops),
            masks=move(self.masks),
            labels=move(self.labels),
        )
