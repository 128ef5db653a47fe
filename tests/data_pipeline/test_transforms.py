"""The equivariance transforms g_θ: identity at θ = 0, composition, ranges, intermediates."""

from __future__ import annotations

import math

import pytest
import torch

from data_pipeline.transforms import build_transform, list_transforms
from data_pipeline.transforms.geometric import se2_matrices

SIZE = 32


def smooth_images(n: int = 4, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth random images (low-frequency content), so bilinear resampling is accurate."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(
        low, size=(size, size), mode="bicubic", align_corners=False
    )


def test_registry_has_paper_transforms() -> None:
    assert {"rotation", "translation", "se2", "color", "blur"} <= set(list_transforms())
    with pytest.raises(KeyError, match="unknown recon.transform"):
        build_transform("shear", SIZE)


@pytest.mark.parametrize("name", ["rotation", "translation", "se2", "color", "blur"])
def test_identity_at_zero(name: str) -> None:
    g = build_transform(name, SIZE)
    x = smooth_images()
    if name == "color":  # color works in [0, 1]: keep the test images inside the valid range
        x = x.clamp(-1.5, 1.5)
    y = g.apply(x, g.identity_params(x.shape[0]))
    tol = 1e-4 if name != "color" else 1e-5
    assert torch.allclose(y, x, atol=tol), (y - x).abs().max()


@pytest.mark.parametrize("name", ["rotation", "translation", "se2", "color", "blur"])
def test_sampled_params_in_range(name: str) -> None:
    g = build_transform(name, 224)
    params = g.sample(4096, generator=torch.Generator().manual_seed(1))
    assert params.shape == (4096, g.num_params)
    for j, (lo, hi) in enumerate(g.param_ranges):
        col = params[:, j]
        assert col.min() >= lo and col.max() <= hi
        # Uniform: both ends of the range are reached within 5% of its width.
        assert col.min() < lo + 0.05 * (hi - lo) and col.max() > hi - 0.05 * (hi - lo)
    normalized = g.normalize_params(params)
    assert normalized.abs().max() <= 1.0 + 1e-6


def test_paper_ranges_at_224_and_scaling() -> None:
    assert build_transform("rotation", 224).param_ranges == ((-45.0, 45.0),)
    assert build_transform("translation", 224).param_ranges == ((-10.0, 10.0), (-10.0, 10.0))
    assert build_transform("translation", 112).param_ranges == ((-5.0, 5.0), (-5.0, 5.0))
    assert build_transform("color", 224).param_ranges[3] == (-0.1, 0.1)
    assert build_transform("blur", 224).param_ranges == ((0.1, 2.0),)


def test_sampling_is_seeded() -> None:
    g = build_transform("se2", SIZE)
    a = g.sample(8, generator=torch.Generator().manual_seed(3))
    b = g.sample(8, generator=torch.Generator().manual_seed(3))
    c = g.sample(8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_se2_matrix_is_group_exponential() -> None:
    """exp((a+b)ξ) = exp(aξ)·exp(bξ) for the one-parameter subgroup, incl. near φ = 0."""
    angle = torch.tensor([30.0, -45.0, 1e-6, 0.0])
    shift = torch.tensor([[5.0, -3.0], [2.0, 7.0], [4.0, 4.0], [-1.0, 2.0]])
    full = se2_matrices(angle, shift)
    third = se2_matrices(angle / 3, shift / 3)
    assert torch.allclose(third @ third @ third, full, atol=1e-5)
    # Pure rotation: the centre is fixed; pure translation: shifts by t.
    rot = se2_matrices(torch.tensor([90.0]), torch.zeros(1, 2))[0]
    assert torch.allclose(rot[:2, :2], torch.tensor([[0.0, -1.0], [1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(rot[:2, 2], torch.zeros(2), atol=1e-6)
    tr = se2_matrices(torch.zeros(1), torch.tensor([[3.0, -2.0]]))[0]
    assert torch.allclose(tr[:2, 2], torch.tensor([3.0, -2.0]))


def _interior(x: torch.Tensor, margin: int) -> torch.Tensor:
    return x[..., margin:-margin, margin:-margin]


@pytest.mark.parametrize("name", ["rotation", "translation", "se2"])
def test_geometric_third_composes_to_full(name: str) -> None:
    """g_{θ/3}∘g_{θ/3}∘g_{θ/3} ≈ g_θ away from the borders (bilinear resampling error only)."""
    size = 64
    g = build_transform(name, size)
    x = smooth_images(n=6, size=size)
    theta = g.sample(6, generator=torch.Generator().manual_seed(0))
    third = g.interpolate(theta, 1 / 3)
    composed = g.apply(g.apply(g.apply(x, third), third), third)
    direct = g.apply(x, theta)
    # Inside the disc that stays in view for all rotations ≤ 45° and the shifts used.
    margin = size // 4
    err = (_interior(composed, margin) - _interior(direct, margin)).abs().mean()
    scale = _interior(direct, margin).abs().mean()
    assert err < 0.03 * scale, (err, scale)
    # And it is not trivially small because nothing moved: g_θ really changes the image.
    assert (_interior(direct, margin) - _interior(x, margin)).abs().mean() > 0.1 * scale


def test_rotation_matches_exact_90_degrees() -> None:
    """A 90° rotation of a square image is a pixel permutation (torch.rot90), up to the sign
    convention (counter-clockwise in image coordinates = clockwise as displayed, y down)."""
    x = smooth_images(n=2, size=16)
    y = build_transform("rotation", 16).apply(x, torch.full((2, 1), 90.0))
    candidates = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert min((y - c).abs().max().item() for c in candidates) < 1e-4


def test_translation_shifts_by_integer_pixels() -> None:
    x = smooth_images(n=2, size=16)
    params = torch.tensor([[3.0, -2.0], [3.0, -2.0]])
    y = build_transform("translation", 16).apply(x, params)
    # Output pixel (r, c) comes from input (r + 2, c - 3): x moves right 3, up 2.
    assert torch.allclose(y[..., 0:12, 3:16], x[..., 2:14, 0:13], atol=1e-5)
    assert torch.all(y[..., :, 0:3] == 0)  # zero fill where nothing maps in


@pytest.mark.parametrize("name", ["color", "blur"])
def test_photometric_intermediates_move_monotonically(name: str) -> None:
    """‖g_{jθ/(K+1)}(u) − g_θ(u)‖ decreases with j, and starts at ‖u − g_θ(u)‖ (j = 0)."""
    g = build_transform(name, 224 if name == "blur" else SIZE)
    size = 64
    x = smooth_images(n=4, size=size, seed=2).clamp(-1.5, 1.5)
    if name == "blur":  # high-frequency content so that blur is visible
        x = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    theta = g.sample(4, generator=torch.Generator().manual_seed(7))
    full = g.apply(x, theta)
    targets = g.intermediates(x, theta, k=4)
    dists = [(x - full).pow(2).mean()] + [(t - full).pow(2).mean() for t in targets]
    assert all(a > b for a, b in zip(dists, dists[1:])), dists


def test_intermediates_are_direct_from_u() -> None:
    """u_k = g_{kθ/(K+1)}(u), each one resampling of u (not a chain)."""
    g = build_transform("rotation", SIZE)
    x = smooth_images()
    theta = torch.tensor([[30.0], [-30.0], [15.0], [45.0]])
    targets = g.intermediates(x, theta, k=2)
    assert len(targets) == 2
    assert torch.allclose(targets[0], g.apply(x, theta / 3))
    assert torch.allclose(targets[1], g.apply(x, 2 * theta / 3))


def test_blur_sigma_zero_and_strength() -> None:
    g = build_transform("blur", 224)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    weak = g.apply(x, torch.tensor([[0.5], [0.5]]))
    strong = g.apply(x, torch.tensor([[2.0], [2.0]]))
    # Blur lowers the variance, more with larger σ; the mean is preserved (reflect padding).
    assert strong.var() < weak.var() < x.var()
    assert math.isclose(strong.mean().item(), x.mean().item(), abs_tol=0.05)
