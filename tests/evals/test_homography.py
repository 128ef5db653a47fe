"""Tests of the homography evaluation (evals/homography.py).

The warp is checked against the image content: on "ramp" sources whose pixels hold their own
(x, y) coordinates, a warped patch holds the source coordinates it was sampled from, so the
homography (hence the corner offsets) can be recovered from pixels alone with numpy least
squares, independently of the module's torch DLT.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from evals.homography import (
    homography_from_corners,
    homography_mce,
    make_pairs,
    mean_corner_error,
    patch_corners,
    warp_patches,
)
from evals.providers import FeatureProvider

P, RHO, MARGIN = 32, 8.0, 8
SIDE = P + 2 * MARGIN


def ramps(n: int) -> torch.Tensor:
    """(n, 3, S, S) sources: channel 0 = x, channel 1 = y of each pixel centre, channel 2 = 0."""
    c = torch.arange(SIDE, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy, torch.zeros_like(xx)]).expand(n, 3, SIDE, SIDE).clone()


def corners_from_pixels(warped: np.ndarray) -> np.ndarray:
    """Fit the projective map (u, v) -> (x, y) read off one warped ramp (3, P, P) by linear
    least squares, and map the patch corners with it -> (4, 2) source coordinates."""
    centres = np.arange(P) + 0.5
    vv, uu = np.meshgrid(centres, centres, indexing="ij")
    u, v = uu.ravel(), vv.ravel()
    x, y = warped[0].ravel().astype(np.float64), warped[1].ravel().astype(np.float64)
    zero, one = np.zeros_like(u), np.ones_like(u)
    a = np.concatenate(
        [
            np.stack([u, v, one, zero, zero, zero, -x * u, -x * v], 1),
            np.stack([zero, zero, zero, u, v, one, -y * u, -y * v], 1),
        ]
    )
    h = np.append(np.linalg.lstsq(a, np.concatenate([x, y]), rcond=None)[0], 1.0).reshape(3, 3)
    corners = np.array([[0, 0, 1], [P, 0, 1], [P, P, 1], [0, P, 1]], dtype=np.float64)
    mapped = corners @ h.T
    return mapped[:, :2] / mapped[:, 2:]


def test_dlt_maps_the_corners() -> None:
    g = torch.Generator().manual_seed(0)
    src = patch_corners(P).expand(5, 4, 2)
    dst = src + torch.rand(5, 4, 2, generator=g) * 10 - 5
    h = homography_from_corners(src, dst)
    homog = torch.cat([src.double(), torch.ones(5, 4, 1, dtype=torch.float64)], -1)
    mapped = torch.einsum("nij,nkj->nki", h, homog)
    torch.testing.assert_close(mapped[..., :2] / mapped[..., 2:], dst.double())


def test_zero_offsets_give_the_original_patch() -> None:
    sources = torch.randn(3, 3, SIDE, SIDE)
    original, warped = warp_patches(sources, torch.zeros(3, 4, 2), P, MARGIN)
    torch.testing.assert_close(original, sources[:, :, MARGIN:-MARGIN, MARGIN:-MARGIN])
    torch.testing.assert_close(warped, original, atol=1e-5, rtol=0)


def test_warped_pixels_carry_the_offsets_and_identity_error_matches() -> None:
    pairs = make_pairs(ramps(64), P, RHO, views=2, generator=torch.Generator().manual_seed(0))
    assert pairs.original.shape == (64, 3, P, P) and pairs.warped.shape == (128, 3, P, P)
    home = patch_corners(P, MARGIN).numpy()
    recovered = np.stack([corners_from_pixels(w) - home for w in pairs.warped.numpy()])
    # The offsets the target claims are the displacement the images carry (to 0.05 px).
    np.testing.assert_allclose(recovered, pairs.offsets.numpy(), atol=0.05)
    assert np.abs(pairs.offsets.numpy()).max() <= RHO
    # Identity (zero-offset) predictor: its MCE is the mean corner displacement, computed here
    # from the pixels; for U uniform on [-1, 1]², E‖U‖ = (√2 + asinh 1)/3 ≈ 0.7652.
    independent = float(np.linalg.norm(recovered, axis=-1).mean())
    identity = mean_corner_error(torch.zeros_like(pairs.offsets), pairs.offsets)
    assert abs(identity - independent) < 0.02
    expected = RHO * (math.sqrt(2) + math.asinh(1)) / 3
    assert abs(identity - expected) < 0.1 * expected


class CoordinateOracle(FeatureProvider):
    """Patch features of ramp images = mean (x, y) source coordinate per 4x4 patch: the offsets
    are a linear function of the corner patches of [original ; warped]."""

    name, patch_size = "oracle", 4

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images[:, :2], self.patch_size)


class Constant(FeatureProvider):
    name, patch_size = "constant", 4

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], 2, P // 4, P // 4)


def test_head_on_oracle_features_beats_identity_and_constant_does_not() -> None:
    kwargs = {"patch_px": P, "rho": RHO, "train_views": 4, "epochs": 15, "channels": 64}
    kwargs["lr"] = 3e-3
    oracle = homography_mce(CoordinateOracle(), ramps(100), ramps(50), **kwargs)
    assert oracle["n_train"] == 360 and oracle["n_test"] == 50  # 10 % of sources held out
    assert oracle["mce"] < 0.35 * oracle["identity_mce"], oracle
    null = homography_mce(Constant(), ramps(100), ramps(50), **kwargs)
    assert null["identity_mce"] == oracle["identity_mce"]  # same seed, same test offsets
    assert abs(null["mce"] - null["identity_mce"]) < 0.1 * null["identity_mce"], null
