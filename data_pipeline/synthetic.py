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
from data_pipeline.masking import BlockMaskGenerator, make_batch_masks


def _smooth_images(n: int, size: int, generator: torch.Generator, low_res: int = 4) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in normalized units (bilinear-upsampled noise)."""
    coarse = torch.randn(n, 3, low_res, low_res, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


class SyntheticLoader:
    """Endless iterable of `Batch` for one rank; `state_dict()` is the next step."""

    def __init__(
        self,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        global_size: int,
        local_size: int,
        n_local: int,
        patch_size: int,
        mask_prob: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        num_classes: int = 10,
        **_: Any,
    ) -> None:
        if global_size % patch_size:
            raise ValueError(f"data.global_size={global_size} is not a multiple of {patch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_size = global_size
        self.local_size = local_size
        self.n_local = n_local
        self.mask_prob = mask_prob
        self.num_classes = num_classes
        grid = (global_size // patch_size, global_size // patch_size)
        self.mask_generator = BlockMaskGenerator(grid, ratio=mask_ratio)
        self.step = 0

    def global_batch(self, step: int) -> Batch:
        """All ranks' images of `step` (global batch size B·W)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        n = self.batch_size * self.world_size
        global_crops = _smooth_images(2 * n, self.global_size, gen).view(
            2, n, 3, self.global_size, self.global_size
        )
        local_crops = _smooth_images(self.n_local * n, self.local_size, gen).view(
            self.n_local, n, 3, self.local_size, self.local_size
        )
        grid = (self.mask_generator.height, self.mask_generator.width)
        masks = make_batch_masks(
            2 * n,
            grid,
            self.mask_prob,
            ratio=self.mask_generator.ratio,
            generator=gen,
            mask_generator=self.mask_generator,
        ).view(2, n, -1)
        labels = torch.randint(0, self.num_classes, (n,), generator=gen)
        return Batch(global_crops, local_crops, masks, labels)

    def batch(self, step: int) -> Batch:
        """This rank's slice of `global_batch(step)`."""
        full = self.global_batch(step)
        rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
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
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
