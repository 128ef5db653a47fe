"""Seeded synthetic multi-crop batches (`data.backend=synthetic`).

The global batch of step s is a pure function of (seed, s) and rank r of a world of W receives
rows [r·B, (r+1)·B) of it. So a single process with batch W·B sees exactly the images that W
ranks with batch B see together: the engine's strategy-equivalence tests and the throughput
benchmarks use this instead of shards (no decode, no augmentation cost).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from data_pipeline.batch import Batch
from data_pipeline.multicrop import MultiCrop


def _smooth_images(n: int, size: int, generator: torch.Generator, low_res: int = 4) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in normalized units (bilinear-upsampled noise)."""
    coarse = torch.randn(n, 3, low_res, low_res, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


class SyntheticLoader:
    """Endless iterable of `Batch` for one rank; `state_dict()` is the next step."""

    def __init__(self, *, num_classes: int = 10, **crops: Any) -> None:
        """``crops``: the fields of :class:`~data_pipeline.multicrop.MultiCrop` (the crop
        scales are not used: crops are drawn, not cut)."""
        spec = MultiCrop(**crops)
        if spec.global_size % spec.patch_size:
            raise ValueError(
                f"data.global_size={spec.global_size} is not a multiple of {spec.patch_size}"
            )
        self.crops = spec
        self.masks = spec.masks()
        self.num_classes = num_classes
        self.step = 0

    def global_batch(self, step: int) -> Batch:
        """All ranks' images of `step` (global batch size B·W)."""
        c = self.crops
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        n = c.batch_size * c.world_size
        global_crops = _smooth_images(2 * n, c.global_size, gen).view(
            2, n, 3, c.global_size, c.global_size
        )
        local_crops = _smooth_images(c.n_local * n, c.local_size, gen).view(
            c.n_local, n, 3, c.local_size, c.local_size
        )
        masks = self.masks(n, gen)
        labels = torch.randint(0, self.num_classes, (n,), generator=gen)
        return Batch(global_crops, local_crops, masks, labels)

    def batch(self, step: int) -> Batch:
        """This rank's slice of `global_batch(step)`."""
        full = self.global_batch(step)
        rank, batch_size = self.crops.rank, self.crops.batch_size
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return Batch(
            full.global_crops[:, rows].contiguous(),
            full.local_crops[:, rows].contiguous(),
            full.masks[:, rows].contiguous(),
            full.labels[rows],
        )

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.crops.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
