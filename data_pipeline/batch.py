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
        mask_indices: (M,) int64 positions of the masked patches in ``masks.view(-1)``
            (image-major, i.e. ``masks[masks]`` order), or None: then `masked_positions()`
            computes them. `to()` fills them in from CPU masks before moving, so that the
            training device never has to report M back to the host (a boolean-mask index on a
            GPU synchronizes).
    """

    global_crops: torch.Tensor
    local_crops: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor | None = None
    mask_indices: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.global_crops.shape[1])

    def masked_positions(self) -> torch.Tensor:
        """(M,) int64 indices of the masked patches into ``masks.view(-1)``, image-major."""
        if self.mask_indices is not None:
            return self.mask_indices
        return mask_positions(self.masks)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        indices = self.mask_indices
        if indices is None and self.masks.device.type == "cpu":
            indices = mask_positions(self.masks)  # on the host: free of device syncs
        return Batch(
            global_crops=move(self.global_crops),
            local_crops=move(self.local_crops),
            masks=move(self.masks),
            labels=move(self.labels),
            mask_indices=move(indices),
        )


def mask_positions(masks: torch.Tensor) -> torch.Tensor:
    """(M,) int64 positions of the True entries of `masks` flattened (row-major order)."""
    return masks.reshape(-1).nonzero().squeeze(1)
