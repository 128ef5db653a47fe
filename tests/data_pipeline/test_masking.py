"""iBOT block masks: budgets, counts of masked images, ratios, reproducibility."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.masking import BlockMaskGenerator, GlobalCropMasks, make_batch_masks
from data_pipeline.multicrop import MultiCrop


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (14, 14), (7, 10)])
def test_block_mask_never_exceeds_budget_and_gets_close(grid: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    mask_generator = BlockMaskGenerator(grid)
    num_patches = grid[0] * grid[1]
    for n_masked in range(0, num_patches // 2 + 1):
        for _ in range(5):
            mask = mask_generator(n_masked, generator)
            assert mask.shape == (num_patches,)
            assert mask.dtype == torch.bool
            assert int(mask.sum()) <= n_masked
            assert int(mask.sum()) >= 0.8 * n_masked


def test_block_mask_is_made_of_blocks() -> None:
    """A block of at least min_block patches has a masked neighbour for most masked patches."""
    generator = torch.Generator().manual_seed(1)
    mask = BlockMaskGenerator((16, 16), min_block=4)(60, generator).view(16, 16)
    padded = torch.nn.functional.pad(mask.float()[None, None], (1, 1, 1, 1))
    neighbours = torch.nn.functional.conv2d(
        padded, torch.tensor([[[[0, 1.0, 0], [1, 0, 1], [0, 1, 0]]]])
    )
    isolated = (mask & (neighbours[0, 0] == 0)).sum()
    assert int(mask.sum()) > 50
    assert int(isolated) <= 0.1 * int(mask.sum())


@pytest.mark.parametrize(
    ("n_images", "mask_prob", "expected"),
    [(32, 0.5, 16), (7, 0.5, 3), (1, 0.5, 1), (3, 0.1, 1), (10, 0.0, 0), (10, 1.0, 10)],
)
def test_exact_number_of_masked_images(n_images: int, mask_prob: float, expected: int) -> None:
    generator = torch.Generator().manual_seed(0)
    masks = make_batch_masks(n_images, (14, 14), mask_prob=mask_prob, generator=generator)
    assert masks.shape == (n_images, 196)
    assert masks.dtype == torch.bool
    assert int(masks.any(dim=1).sum()) == expected


def test_ratios_within_bounds_and_spread() -> None:
    generator = torch.Generator().manual_seed(3)
    ratio = (0.1, 0.5)
    masks = make_batch_masks(64, (14, 14), mask_prob=0.5, ratio=ratio, generator=generator)
    fractions = masks.float().mean(dim=1)
    masked = fractions[fractions > 0]
    assert len(masked) == 32
    assert float(masked.max()) <= ratio[1]
    assert float(masked.min()) >= 0.8 * ratio[0]
    # DINOv2 spreads the ratios linearly over the range: both ends are visited.
    assert float(masked.min()) < 0.15
    assert float(masked.max()) > 0.45


def test_masks_reproducible_and_shuffled() -> None:
    first = make_batch_masks(16, (8, 8), generator=torch.Generator().manual_seed(5))
    again = make_batch_masks(16, (8, 8), generator=torch.Generator().manual_seed(5))
    other = make_batch_masks(16, (8, 8), generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    rows = [
        make_batch_masks(16, (8, 8), generator=torch.Generator().manual_seed(s)) for s in range(8)
    ]
    masked_rows = {tuple(r.any(dim=1).nonzero().flatten().tolist()) for r in rows}
    assert len(masked_rows) > 1  # not always the first half of the batch


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make_batch_masks(4, (4, 4), mask_prob=1.5)
    with pytest.raises(ValueError):
        BlockMaskGenerator((4, 4), ratio=(0.6, 0.2))


@pytest.mark.parametrize(
    ("mask_prob", "ratio"), [(0.5, (0.1, 0.5)), (1.0, [0, 1]), (0.0, (0.2, 0.2))]
)
def test_global_crop_masks_are_the_batch_masks_of_both_crops(
    mask_prob: float, ratio: tuple[float, float]
) -> None:
    """What every reader draws: make_batch_masks over the 2B global crops, crop-major."""
    masks = GlobalCropMasks(32, 4, mask_prob, ratio)(5, torch.Generator().manual_seed(3))
    expected = make_batch_masks(
        10, (8, 8), mask_prob, ratio=ratio, generator=torch.Generator().manual_seed(3)
    ).view(2, 5, 64)
    assert torch.equal(masks, expected)
    spec = MultiCrop(5, 0, 32, 16, 2, 4, mask_prob=mask_prob, mask_ratio=ratio)
    assert torch.equal(spec.masks()(5, torch.Generator().manual_seed(3)), expected)


def test_multicrop_names_its_fields() -> None:
    with pytest.raises(TypeError, match="global_sise"):
        MultiCrop(batch_size=2, seed=0, global_sise=16, local_size=8, n_local=0, patch_size=4)
