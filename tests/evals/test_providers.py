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


def test_feature_layers_concatenate_the_last_blocks(backbone: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 16, 16)
    one, two = build_provider(backbone), build_provider(backbone, feature_layers=2)
    with torch.no_grad():
        layers = backbone.last_layers(images, 2)  # (2, 1 + 2 + 16, 32) each, normed
        torch.testing.assert_close(layers[-1], backbone(images))  # the last = the forward
        grid, pooled = two.patch_features(images), two.global_features(images)
        grid_one, pooled_one = one.patch_features(images), one.global_features(images)
    assert grid.shape == (2, 64, 4, 4) and pooled.shape == (2, 128)
    # Oldest block first: the second half is what one layer gives, the first the block before.
    torch.testing.assert_close(grid[:, 32:], grid_one)
    torch.testing.assert_close(pooled[:, 64:], pooled_one)
    torch.testing.assert_close(pooled[:, :32], layers[0][:, 0])
    torch.testing.assert_close(grid[:, :32, 0, 0], layers[0][:, 3])
    assert not torch.allclose(layers[0], layers[1])
    with pytest.raises(ValueError, match="feature_layers=3: the backbone has 2 blocks"):
        build_provider(backbone, feature_layers=3).global_features(images)


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


def test_grid_features_keep_the_layout_and_the_cls_token(backbone: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 16, 16)
    provider = build_provider(backbone)
    with torch.no_grad():
        tokens = backbone(images)
        patch = provider.patch_features(images)  # (2, 32, 4, 4)
        grid2 = provider.grid_features(images, 2)
        full = provider.grid_features(images, 0)
    assert grid2.shape == (2, 32 + 32 * 2 * 2) and full.shape == (2, 32 + 32 * 4 * 4)
    torch.testing.assert_close(grid2[:, :32], tokens[:, 0])  # CLS first
    cells = grid2[:, 32:].view(2, 32, 2, 2)
    torch.testing.assert_close(cells[:, :, 1, 0], patch[:, :, 2:4, 0:2].mean((2, 3)))
    torch.testing.assert_close(full[:, 32:], patch.flatten(1))
    with pytest.raises(ValueError, match="grid"):
        provider.grid_features(images, 5)


def test_equivariance_fn_selects_grid_or_global(backbone: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 16, 16)
    provider = build_provider(backbone)
    with torch.no_grad():
        torch.testing.assert_close(
            provider.equivariance_fn("global")(images), provider.global_features(images)
        )
        torch.testing.assert_close(
            provider.equivariance_fn("grid", 2)(images), provider.grid_features(images, 2)
        )
    with pytest.raises(ValueError, match="equivariance.features"):
        provider.equivariance_fn("tokens")


def test_grid_features_see_a_rotation_that_the_pooled_vector_misses() -> None:
    # A patch-mean is blind to where things are; the pooled grid is not: rotating a bright
    # quadrant by 90° leaves the mean of the pixel patches unchanged but moves a grid cell.
    image = torch.zeros(1, 3, 8, 8)
    image[..., :4, :4] = 1.0
    rotated = torch.rot90(image, 1, dims=(-2, -1))
    pixels = PixelFeatures(patch_size=2)
    mean = lambda x: pixels.patch_features(x).mean((2, 3))  # noqa: E731
    assert torch.equal(mean(image), mean(rotated))
    assert not torch.equal(pixels.grid_features(image, 2), pixels.grid_features(rotated, 2))
    assert pixels.equivariance_fn("grid", 0)(image).shape == (1, 12 * 4 * 4)


def test_equi_features_pool_the_equi_slice_like_the_global_feature(
    backbone: torch.nn.Module,
) -> None:
    from pretrain.models.heads import SplitHead

    torch.manual_seed(1)
    head = SplitHead(32, 24, 8).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        z_equi = head(backbone(images))[1]  # (2, 1 + 2 + 16, 8): CLS, 2 registers, 16 patches
        for pooling, expected in (
            ("cls", z_equi[:, 0]),
            ("mean", z_equi[:, 3:].mean(1)),
            ("cls+mean", torch.cat([z_equi[:, 0], z_equi[:, 3:].mean(1)], 1)),
        ):
            got = build_provider(backbone, pooling=pooling, split_head=head).equi_features(images)
            torch.testing.assert_close(got, expected)
    pixels = build_provider(backbone, "pixels")
    assert torch.equal(pixels.equivariance_fn("equi")(images), pixels.global_features(images))
    with pytest.raises(ValueError, match="equivariance.features"):
        pixels.equivariance_fn("tokens")


def test_patchstats_floor_sees_orientation_inside_patches_but_not_their_order() -> None:
    """The positive control: pooled patch moments ignore where patches are (a shift by whole
    patches leaves them unchanged) but see how the content inside them is oriented."""
    from evals.providers import FLOORS, PatchStatsFeatures

    assert "patchstats" in FLOORS
    p, side = 4, 16
    provider = build_provider(build_backbone("vit_tiny", img_size=side, patch_size=p), "patchstats")
    assert isinstance(provider, PatchStatsFeatures)
    rows = torch.arange(side, dtype=torch.float32)
    stripes = torch.sin(rows * 1.3)[None, None, :, None].expand(1, 3, side, side)  # horizontal
    stripes = stripes + 0.1 * torch.randn(
        1, 3, side, side, generator=torch.Generator().manual_seed(0)
    )
    feats = provider.global_features(stripes)
    assert feats.shape == (1, 3 * p * p + p * p * (p * p + 1) // 2)
    shifted = torch.roll(stripes, shifts=(p, 2 * p), dims=(2, 3))  # patches permuted, not turned
    torch.testing.assert_close(provider.global_features(shifted), feats)
    turned = stripes.transpose(2, 3)  # vertical stripes: the same patches' content turned 90°
    second = 3 * p * p
    diff = (provider.global_features(turned) - feats)[:, second:].abs().max()
    assert diff > 0.1 * feats[:, second:].abs().max()
    # the mean over all pixels of the image, which pooling keeps, is the same for both
    torch.testing.assert_close(turned.mean(), stripes.mean())


def test_cli_floor_choices_are_the_providers_floors() -> None:
    from equirecon.cli import build_parser
    from evals.providers import FLOORS

    ev = build_parser()._subparsers._group_actions[0].choices["eval"]
    floor = next(a for a in ev._actions if a.dest == "floor")
    assert list(floor.choices) == list(FLOORS)
