"""The torch path's augmentation kernels against torchvision's, and the whole view pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from data_pipeline.augment import (
    MultiCropAugmentation,
    _Normalize,
    _RandomSolarize,
    blur_kernel_size,
    blur_window,
    gaussian_blur,
)
from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD


def _image(size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_gaussian_blur_matches_torchvision(sigma: float) -> None:
    """Same window: equal to torchvision's (reflect padding); the full 10 % window differs by
    the < 0.3 % of weight beyond 3 sigma."""
    x = _image().float() / 255
    window = blur_window(sigma, blur_kernel_size(224))
    assert window == min(2 * int(np.ceil(3 * sigma - 1e-4)) + 1, 23)
    ours = gaussian_blur(x, sigma, max_kernel=23)
    same = v2.functional.gaussian_blur(x, [window, window], [sigma, sigma])
    torch.testing.assert_close(ours, same, rtol=1e-5, atol=1e-6)
    full = v2.functional.gaussian_blur(x, [23, 23], [sigma, sigma])
    assert (ours - full).abs().max() < 0.01


def test_normalize_and_solarize_equal_torchvision_float_ops() -> None:
    x = _image()
    normalized = _Normalize()(x)
    reference = v2.functional.normalize(x.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    torch.testing.assert_close(normalized, reference, rtol=1e-5, atol=1e-5)
    solarize = _RandomSolarize(p=1.0)
    expected = v2.functional.normalize(
        v2.functional.solarize(x.float() / 255, 128 / 255), list(IMAGENET_MEAN), list(IMAGENET_STD)
    )
    torch.testing.assert_close(solarize(normalized), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(_RandomSolarize(p=0.0)(normalized), normalized)


def test_views_shapes_statistics_and_seeded_reproducibility() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    aug = MultiCropAugmentation(64, 32, n_local=3)
    torch.manual_seed(5)
    global_crops, local_crops = aug(photo)
    assert [c.shape for c in global_crops] == [(3, 64, 64)] * 2
    assert [c.shape for c in local_crops] == [(3, 32, 32)] * 3
    assert all(c.dtype == torch.float32 and c.is_contiguous() for c in global_crops)
    assert all(torch.isfinite(c).all() for c in global_crops + local_crops)
    # normalized ImageNet space: within the range of (0 - mean) / std .. (1 - mean) / std
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert all(low - 1e-4 <= float(c.min()) and float(c.max()) <= high + 1e-4 for c in global_crops)
    torch.manual_seed(5)
    again, _ = aug(photo)
    assert all(torch.equal(a, b) for a, b in zip(global_crops, again))
    torch.manual_seed(6)
    other, _ = aug(photo)
    assert not torch.equal(other[0], global_crops[0])
