"""iBOT-style block masking of the patch grid (as used by iBOT and DINOv2).

A mask is a flat ``(h * w,)`` bool tensor over the patch grid of one global crop, True = masked.
All randomness comes from an explicit ``torch.Generator`` so masks are reproducible.
"""

from __future__ import annotations

import math

import torch


class BlockMaskGenerator:
    """Masks about ``n_masked`` patches of an ``h x w`` grid with random rectangular blocks.

    Blocks have a random area of at least ``min_block`` patches (fewer only when fewer remain)
    and at most ``max_block`` patches, and a log-uniform aspect ratio in
    ``[min_aspect, 1 / min_aspect]``. A block is accepted only if it adds new masked patches
    without exceeding the budget, so the result never masks more than ``n_masked`` patches.

    Args:
        grid: (h, w) patch grid.
        ratio: default (min, max) fraction of masked patches, used by :func:`make_batch_masks`.
        min_block: smallest block area in patches.
        max_block: largest block area in patches; default half the grid.
        min_aspect: smallest block aspect ratio (height / width).
        max_attempts: tries per block before giving up on adding more.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        ratio: tuple[float, float] = (0.1, 0.5),
        min_block: int = 4,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        max_attempts: int = 10,
    ) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        if self.height < 1 or self.width < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        if not 0.0 <= ratio[0] <= ratio[1] <= 1.0:
            raise ValueError(f"ratio must satisfy 0 <= min <= max <= 1, got {ratio}")
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.num_patches = self.height * self.width
        self.min_block = max(1, int(min_block))
        self.max_block = int(max_block) if max_block is not None else self.num_patches // 2
        self.max_block = max(self.max_block, self.min_block)
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.max_attempts = max_attempts

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), min_block={self.min_block}, "
            f"max_block={self.max_block})"
        )

    def _uniform(self, low: float, high: float, generator: torch.Generator | None) -> float:
        u = float(torch.rand((), generator=generator))
        return low + (high - low) * u

    def _add_block(self, mask: torch.Tensor, budget: int, generator: torch.Generator | None) -> int:
        """Masks one more block of at most ``budget`` new patches; returns how many were added."""
        low = min(self.min_block, budget)
        high = min(self.max_block, budget)
        for _ in range(self.max_attempts):
            area = self._uniform(low, high, generator)
            aspect = math.exp(self._uniform(*self.log_aspect, generator))
            h = max(1, int(round(math.sqrt(area * aspect))))
            w = max(1, int(round(math.sqrt(area / aspect))))
            if h > self.height or w > self.width:
                continue
            top = int(torch.randint(0, self.height - h + 1, (), generator=generator))
            left = int(torch.randint(0, self.width - w + 1, (), generator=generator))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block.fill_(True)
                return new
        return 0

    def __call__(self, n_masked: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws one block mask.

        Args:
            n_masked: target number of masked patches (clipped to the grid size).
            generator: torch RNG to draw from (None = torch's global RNG).

        Returns:
            (h * w,) bool, True = masked; at most ``n_masked`` entries are True.
        """
        target = max(0, min(int(n_masked), self.num_patches))
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < target:
            added = self._add_block(mask, target - count, generator)
            if added == 0:
                break
            count += added
        return mask.flatten()


def make_batch_masks(
    n_images: int,
    grid: tuple[int, int],
    mask_prob: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
    min_block: int = 4,
    mask_generator: BlockMaskGenerator | None = None,
) -> torch.Tensor:
    """Block masks for a batch of global crops, DINOv2-style.

    Exactly ``int(n_images * mask_prob)`` images are masked (at least one when ``mask_prob > 0``
    and ``n_images >= 1``). The masking ratios are spread over ``ratio`` as DINOv2 does: the
    i-th masked image draws its ratio uniformly from the i-th of equal sub-intervals of
    ``ratio``. Which images get masks is shuffled.

    Args:
        n_images: number of crops to mask (e.g. 2 * batch size).
        grid: (h, w) patch grid of a crop.
        mask_prob: fraction of crops that get a mask.
        ratio: (min, max) fraction of patches masked in a masked crop.
        generator: torch RNG to draw from (None = torch's global RNG).
        min_block: smallest block area in patches (ignored with ``mask_generator``).
        mask_generator: a prebuilt generator for ``grid`` (saves rebuilding it per batch).

    Returns:
        (n_images, h * w) bool, True = masked.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    gen = mask_generator or BlockMaskGenerator(grid, ratio=ratio, min_block=min_block)
    num_patches = gen.num_patches
    masks = torch.zeros(n_images, num_patches, dtype=torch.bool)
    n_masked_images = int(n_images * mask_prob)
    if mask_prob > 0 and n_images >= 1:
        n_masked_images = max(1, n_masked_images)
    edges = torch.linspace(ratio[0], ratio[1], n_masked_images + 1).tolist()
    for i in range(n_masked_images):
        image_ratio = edges[i] + (edges[i + 1] - edges[i]) * float(
            torch.rand((), generator=generator)
        )
        masks[i] = gen(int(num_patches * image_ratio), generator)
    order = torch.randperm(n_images, generator=generator)
    return masks[order]


class GlobalCropMasks:
    """The iBOT masks of a batch's two global crops, as every reader draws them.

    Args:
        global_size: global crop side (pixels).
        patch_size: patch side (pixels); the grid is ``global_size // patch_size`` square.
        mask_prob: fraction of the ``2 B`` crops that get a mask.
        ratio: (min, max) masked fraction of a masked crop.
    """

    def __init__(
        self, global_size: int, patch_size: int, mask_prob: float, ratio: tuple[float, float]
    ) -> None:
        side = global_size // patch_size
        self.generator = BlockMaskGenerator((side, side), ratio=(float(ratio[0]), float(ratio[1])))
        self.mask_prob = mask_prob

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(2, batch_size, N) bool masks, True = masked (:func:`make_batch_masks` of the
        ``2 * batch_size`` crops, crop-major), drawn from ``generator``."""
        gen = self.generator
        return make_batch_masks(
            2 * batch_size,
            (gen.height, gen.width),
            mask_prob=self.mask_prob,
            ratio=gen.ratio,
            generator=generator,
            mask_generator=gen,
        ).view(2, batch_size, -1)
