"""Tests of the feature providers (evals/providers.py): the backbone, and the two floors."""

from __future__ import annotations

import pytest
import torch

from evals.providers import PixelFeatures, build_provider, random_like
from pretrain.models.backbone import build_backbone


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    tiny = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_registers=2)
    return build_backbone("vit_tiny", **tiny).eval()


def test_backbone_patch_features_are_the_patch_tokens_on_their_grid(
    backbone: torch.nn.Module,
) -> None:
    images = torch.randn(2, 3, 16, 16)
    provider = build_provider(backbone)
    with torch.no_grad():
        tokens = backbone(images)
        grid = provider.patch_features(images)
        pooled = provider.global_features(images)
    assert grid.shape == (2, 32, 4, 4) and pooled.shape == (2, 64)
    # Token 1 + 2 registers + (row r, column c) is the grid cell (r, c).
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 3 + 1 * 4 + 2])
    torch.testing.assert_close(pooled[:, :32], tokens[:, 0])


def test_pixel_floor() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    pixels = PixelFeatures(patch_size=4)
    assert torch.equal(pixels.global_features(images), images.flatten(1))
    grid = pixels.patch_features(images)
    assert grid.shape == (2, 48, 2, 2)
    assert torch.equal(grid[0, :, 1, 0].view(3, 4, 4), images[0, :, 4:8, 0:4])
    assert PixelFeatures(4, max_side=4).global_features(images).shape == (2, 48)


def test_random_floor_has_the_same_shape_and_a_fixed_seed(backbone: torch.nn.Module) -> None:
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    fresh = random_like(backbone, seed=1)
    assert torch.equal(torch.rand(2), expected)  # the global RNG is left alone
    again = random_like(backbone, seed=1)
    shapes = {k: v.shape for k, v in backbone.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    for (name, a), b in zip(fresh.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), backbone(x))
    assert build_provider(backbone, "random", seed=1).name == "random"
    with pytest.raises(ValueError, match="floor"):
        build_provider(backbone, "noise")
