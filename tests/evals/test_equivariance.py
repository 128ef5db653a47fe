"""Tests of the synthetic equivariance evaluation (evals/equivariance.py) and evals/features.py.

Oracle feature functions read θ-dependent quantities straight off purpose-built images (the
polar angle of a blob, its centroid, colour statistics), so the pair [f(I); f(g_θ(I))] determines
θ through a simple function and R² must come out near 1. Null feature functions ignore the image
or are invariant to g, so nothing about θ can be learned and R² must stay near (or below) 0.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD
from data_pipeline.transforms import build_transform
from data_pipeline.transforms.fill import DISK_MARGIN, disk_margin, inscribed_disk
from evals.equivariance import ProbeView, center_crop, context_size, equivariance_r2
from evals.features import backbone_feature_fn, extract_features

SIZE = 32
FAST = {"hidden": 256}  # the default width 1024 is slow on 2 CPU cores; one test uses it
_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _centred_grid() -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(SIZE) + 0.5 - SIZE / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx, yy


def blob_images(n: int, seed: int) -> torch.Tensor:
    """One gaussian blob (σ 2 px) on a zero (normalized) background -> (n, 3, 32, 32).

    The blob sits 6-10 px from the centre at a polar angle in [-90°, 90°], so rotations by
    |φ| <= 45° keep it inside the crop and its polar angle away from the ±180° wrap.
    """
    g = torch.Generator().manual_seed(seed)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.pi / 2
    radius = 6 + 4 * torch.rand(n, generator=g)
    cx, cy = (radius * angle.cos())[:, None, None], (radius * angle.sin())[:, None, None]
    xx, yy = _centred_grid()
    blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.0**2))  # (n, H, W)
    amplitude = 1 + torch.rand(n, 3, 1, 1, generator=g)
    return blob[:, None] * amplitude


def color_images(n: int, seed: int) -> torch.Tensor:
    """Mid-grey images of one chroma (YIQ angle in ±72°) plus smooth luma -> (n, 3, 32, 32).

    Values stay well inside [0, 1] under every colour jitter, so no clamping hides θ.
    """
    g = torch.Generator().manual_seed(seed)
    angle = (torch.rand(n, generator=g) * 2 - 1) * 0.4 * math.pi
    chroma = 0.05 + 0.05 * torch.rand(n, generator=g)
    luma = 0.4 + 0.1 * torch.rand(n, 1, 1, 1, generator=g)
    noise = torch.randn(n, 1, 4, 4, generator=g)
    luma = luma + 0.04 * F.interpolate(noise, size=(SIZE, SIZE), mode="bicubic")
    iq = torch.stack([chroma * angle.cos(), chroma * angle.sin()], 1)[:, :, None, None]
    yiq = torch.cat([luma, iq.expand(n, 2, SIZE, SIZE)], dim=1)
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_YIQ), yiq)
    return (rgb - _MEAN) / _STD


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Smooth random content (bicubic upsampling of 4x4 noise) -> (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, 4, 4, generator=g)
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bicubic")


def centroid(images: torch.Tensor) -> torch.Tensor:
    """Oracle for translation: intensity centroid (x, y) in centred pixels -> (B, 2)."""
    xx, yy = _centred_grid()
    w = images.clamp_min(0).sum(1)
    mass = w.sum((1, 2)).clamp_min(1e-6)
    return torch.stack([(w * xx).sum((1, 2)) / mass, (w * yy).sum((1, 2)) / mass], dim=1)


def polar_angle(images: torch.Tensor) -> torch.Tensor:
    """Oracle for rotation: polar angle (degrees) and radius of the centroid -> (B, 2)."""
    c = centroid(images)
    return torch.stack([torch.rad2deg(torch.atan2(c[:, 1], c[:, 0])), c.norm(dim=1)], dim=1)


def color_stats(images: torch.Tensor) -> torch.Tensor:
    """Oracle for colour jitter: log mean luma, log luma std, log chroma, chroma angle -> (B, 4)."""
    yiq = torch.einsum("ij,bjhw->bihw", _YIQ, images * _STD + _MEAN)
    luma, iq = yiq[:, 0], yiq[:, 1:]
    mean_iq = iq.mean((2, 3))
    return torch.stack(
        [
            luma.mean((1, 2)).log(),
            luma.std((1, 2)).log(),
            iq.norm(dim=1).mean((1, 2)).log(),
            torch.atan2(mean_iq[:, 1], mean_iq[:, 0]),
        ],
        dim=1,
    )


def constant(images: torch.Tensor) -> torch.Tensor:
    """Null: ignores the image -> (B, 8) ones."""
    return torch.ones(images.shape[0], 8)


def radius_and_mass(images: torch.Tensor) -> torch.Tensor:
    """Null for rotation: rotation-invariant content (centroid radius, total mass) -> (B, 2)."""
    return torch.stack([centroid(images).norm(dim=1), images.sum((1, 2, 3))], dim=1)


ORACLES = {
    "rotation": (blob_images, polar_angle),
    "translation": (blob_images, centroid),
    "color": (color_images, color_stats),
}


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_oracle_features_give_r2_near_one(name: str) -> None:
    make_images, feature_fn = ORACLES[name]
    transform = build_transform(name, SIZE)
    result = equivariance_r2(
        feature_fn, make_images(200, seed=0), make_images(100, seed=1), transform, **FAST
    )
    assert result["r2"] > 0.9, result
    assert set(result["r2_per_param"]) == set(transform.param_names)
    assert min(result["r2_per_param"].values()) > 0.9, result
    assert (result["n_train"], result["n_test"]) == (400, 100)


def test_oracle_with_paper_head_and_more_views() -> None:
    # The paper's head width (1024) and 3 views per train image (checks the view bookkeeping).
    result = equivariance_r2(
        polar_angle,
        blob_images(100, seed=0),
        blob_images(100, seed=1),
        build_transform("rotation", SIZE),
        views_per_image=3,
        epochs=20,
    )
    assert result["r2"] > 0.9, result
    assert result["n_train"] == 300


def test_a_feature_constant_in_train_does_not_blow_up_the_test_images() -> None:
    # Pixel (0, 0) is 0 in every train image and 1 in every test image: a raw-pixel floor on
    # data with an always-black pixel. Standardizing by its ~0 std used to send test outputs to
    # ~1e6 (R² in the -10^4 range); it must stay an oracle.
    train, test = blob_images(200, seed=0), blob_images(100, seed=1)
    train[:, :, 0, 0], test[:, :, 0, 0] = 0.0, 1.0

    def oracle_and_corner(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([polar_angle(images), images[:, :1, 0, 0]], dim=1)

    result = equivariance_r2(
        oracle_and_corner, train, test, build_transform("rotation", SIZE), **FAST
    )
    assert result["r2"] > 0.8, result


@pytest.mark.parametrize("name", ["rotation", "translation", "color"])
def test_constant_features_give_r2_near_zero(name: str) -> None:
    make_images = ORACLES[name][0]
    transform = build_transform(name, SIZE)
    result = equivariance_r2(
        constant, make_images(200, seed=0), make_images(100, seed=1), transform, **FAST
    )
    assert abs(result["r2"]) < 0.1, result


def test_noise_and_invariant_features_learn_nothing() -> None:
    g = torch.Generator().manual_seed(123)

    def noise(images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape[0], 8, generator=g)

    train, test = blob_images(200, seed=0), blob_images(100, seed=1)
    rotation = build_transform("rotation", SIZE)
    # The head overfits the 400 train pairs, so held-out R² of a null is at or below 0.
    for feature_fn in (noise, radius_and_mass):
        result = equivariance_r2(feature_fn, train, test, rotation, **FAST)
        assert result["r2"] < 0.05, (feature_fn.__name__, result)


def test_r2_is_deterministic_given_the_seed() -> None:
    train, test = smooth_images(64, seed=0), smooth_images(32, seed=1)
    se2 = build_transform("se2", SIZE)

    def pooled(images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, 4).flatten(1)  # (B, 48)

    kwargs = {"hidden": 64, "epochs": 5, "batch_size": 32}
    first = equivariance_r2(pooled, train, test, se2, seed=3, **kwargs)
    assert equivariance_r2(pooled, train, test, se2, seed=3, **kwargs) == first
    assert equivariance_r2(pooled, train, test, se2, seed=4, **kwargs)["r2"] != first["r2"]
    assert set(first["r2_per_param"]) == {"angle_deg", "shift_x_px", "shift_y_px"}


def test_equivariance_r2_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    equivariance_r2(
        constant,
        smooth_images(16, 0),
        smooth_images(8, 1),
        build_transform("blur", SIZE),
        hidden=8,
        epochs=1,
    )
    assert torch.equal(torch.rand(3), expected)


def test_features_are_extracted_once_per_image_and_view() -> None:
    seen: list[int] = []

    def counting(images: torch.Tensor) -> torch.Tensor:
        assert torch.is_inference_mode_enabled()
        seen.append(images.shape[0])
        return images.mean((2, 3))

    equivariance_r2(
        counting,
        smooth_images(20, 0),
        smooth_images(10, 1),
        build_transform("translation", SIZE),
        views_per_image=2,
        batch_size=8,
        hidden=8,
        epochs=3,
    )
    assert sum(seen) == 20 + 2 * 20 + 10 + 10  # f(I) and f(g(I)), not once per epoch
    assert max(seen) <= 8


# --- corner-free views (ProbeView) -------------------------------------------------------------


@pytest.mark.parametrize("name", ["rotation", "translation", "se2"])
def test_context_view_never_shows_the_fill(name: str) -> None:
    """The centre crop of g(source) lies inside the source for the extreme θ of each family."""
    transform = build_transform(name, SIZE)
    view = ProbeView(transform, "context", SIZE)
    source = view.source_size
    assert source == context_size(transform, SIZE) > SIZE
    ranges = transform.param_ranges
    corners = torch.cartesian_prod(*[torch.tensor(r) for r in ranges]).reshape(-1, len(ranges))
    ones = torch.ones(corners.shape[0], 3, source, source)
    out = view.transformed(ones, corners)
    assert out.shape == (corners.shape[0], 3, SIZE, SIZE)
    assert out.min() > 0.999, f"{name}: fill reached the crop ({out.min():.3f})"
    # A source one pixel smaller per side would show the fill at the extreme angle/shift.
    tight = build_transform(name, SIZE)
    smaller = tight.apply(torch.ones(corners.shape[0], 3, source - 6, source - 6), corners)
    assert center_crop(smaller, SIZE).min() < 0.99
    assert view.plain(ones).shape == (corners.shape[0], 3, SIZE, SIZE)


def test_disk_view_masks_outside_and_rotation_keeps_the_disk_filled() -> None:
    rotation = build_transform("rotation", SIZE)
    view = ProbeView(rotation, "disk", SIZE)
    assert abs(inscribed_disk(SIZE).mean() - math.pi / 4) < 0.02  # area of the inscribed disk
    disk = inscribed_disk(SIZE, DISK_MARGIN)
    assert disk[0, 0] == 0 and disk[SIZE // 2, 0] == 0 and disk[SIZE // 2, SIZE // 2] == 1
    ones = torch.ones(2, 3, SIZE, SIZE)
    out = view.transformed(ones, torch.tensor([[45.0], [-45.0]]))
    assert (out * (1 - disk)).abs().max() == 0
    assert out[..., disk.bool()].min() > 0.999  # no fill inside the probe's disk


@pytest.mark.parametrize("name", ["translation", "se2"])
def test_disk_view_hides_the_fill_of_every_shift(name: str) -> None:
    """A shift moves the disk with the image: the probe's disk shrinks by the largest shift (as
    `recon.fill=disk` does in training), so no pixel it keeps shows the fill at any θ corner."""
    transform = build_transform(name, SIZE)
    view = ProbeView(transform, "disk", SIZE)
    corners = torch.tensor(
        [
            [lo if bit else hi for bit, (lo, hi) in zip(bits, transform.param_ranges)]
            for bits in torch.cartesian_prod(*[torch.tensor([0, 1])] * len(transform.param_ranges))
        ]
    ).float()
    out = view.transformed(torch.ones(corners.shape[0], 3, SIZE, SIZE), corners)
    kept = inscribed_disk(SIZE, disk_margin(transform)).bool()
    assert disk_margin(transform) > DISK_MARGIN + 1
    assert out[..., kept].min() > 0.999, f"{name}: the fill reached the disk"
    assert out[..., ~kept].abs().max() == 0
    if name == "se2":  # rotated corners shifted inwards: the rotation's margin alone leaks
        rotation_disk = inscribed_disk(SIZE, DISK_MARGIN).bool()
        shifted = transform.apply(torch.ones_like(out), corners)
        assert (shifted[..., rotation_disk] < 0.99).any()


@pytest.mark.parametrize(
    ("view", "readable"), [("full", True), ("disk", False), ("context", False)]
)
def test_only_the_full_view_lets_the_fill_give_rotation_away(view: str, readable: bool) -> None:
    """Featureless (constant) images: θ is in the fill pattern and nowhere else."""
    rotation = build_transform("rotation", SIZE)
    side = ProbeView(rotation, view, SIZE).source_size
    train, test = torch.ones(300, 3, side, side), torch.ones(100, 3, side, side)

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, 8).flatten(1)

    r2 = equivariance_r2(pixels, train, test, rotation, view=view, **FAST)["r2"]
    assert (r2 > 0.8) if readable else (abs(r2) < 0.05), (view, r2)


def test_view_checks_the_source_size_and_name() -> None:
    rotation = build_transform("rotation", SIZE)
    with pytest.raises(ValueError, match="needs 48x48 sources"):
        equivariance_r2(
            constant, smooth_images(8, 0), smooth_images(4, 1), rotation, view="context"
        )
    with pytest.raises(ValueError, match="equivariance.view"):
        ProbeView(rotation, "corners", SIZE)
    assert ProbeView(build_transform("color", SIZE), "context", SIZE).source_size == SIZE


def test_repeats_average_fits_and_report_their_spread() -> None:
    train, test = blob_images(120, seed=0), blob_images(60, seed=1)
    rotation = build_transform("rotation", SIZE)
    kwargs = {"hidden": 64, "epochs": 8, "seed": 5}
    one = equivariance_r2(polar_angle, train, test, rotation, **kwargs)
    three = equivariance_r2(polar_angle, train, test, rotation, repeats=3, **kwargs)
    assert one["r2_std"] == 0.0 and one["r2_fits"] == [one["r2"]]
    assert len(three["r2_fits"]) == 3 and three["r2_fits"][0] == pytest.approx(one["r2"])
    assert three["r2"] == pytest.approx(sum(three["r2_fits"]) / 3, abs=1e-6)
    assert three["r2_std"] > 0


def test_a_probe_that_never_generalizes_reports_no_information() -> None:
    """Pure noise features: the validation-selected h is the constant train-mean predictor."""
    g = torch.Generator().manual_seed(7)

    def noise(images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape[0], 512, generator=g)

    result = equivariance_r2(
        noise, smooth_images(100, 0), smooth_images(100, 1), build_transform("se2", SIZE), **FAST
    )
    assert -0.1 < result["r2"] < 0.02, result


# --- evals/features.py -------------------------------------------------------------------------


def test_extract_features_batches_and_returns_plain_float32() -> None:
    images = smooth_images(10, 0)
    feats = extract_features(lambda x: x.double().mean((2, 3)), images, batch_size=3)
    assert feats.shape == (10, 3) and feats.dtype == torch.float32
    assert not feats.is_inference()  # usable as input of a trained head
    torch.testing.assert_close(feats, images.mean((2, 3)))
    bar = extract_features(lambda x: x.mean((2, 3)), images, batch_size=4, progress="test")
    torch.testing.assert_close(bar, feats)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        extract_features(lambda x: x, images)


class _FakeViT(nn.Module):
    """Tokens (B, 1 + R + N, D): CLS = 1, registers = -100, patch i = i (N = 4, D = 2)."""

    def __init__(self, registers: int) -> None:
        super().__init__()
        self.registers = registers
        self.num_prefix_tokens = 1 + registers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        cls = torch.ones(b, 1, 2)
        regs = torch.full((b, self.registers, 2), -100.0)
        patches = torch.arange(4.0).view(1, 4, 1).expand(b, 4, 2)
        return torch.cat([cls, regs, patches], dim=1)


@pytest.mark.parametrize("registers", [0, 4])
def test_backbone_feature_fn_poolings(registers: int) -> None:
    backbone = _FakeViT(registers).train()
    images = torch.zeros(3, 3, 8, 8)
    cls = backbone_feature_fn(backbone, "cls", num_prefix_tokens=1 + registers)(images)
    assert not backbone.training
    torch.testing.assert_close(cls, torch.ones(3, 2))
    mean = backbone_feature_fn(backbone, "mean", num_prefix_tokens=1 + registers)(images)
    torch.testing.assert_close(mean, torch.full((3, 2), 1.5))  # registers excluded
    both = backbone_feature_fn(backbone)(images)  # num_prefix_tokens read off the backbone
    torch.testing.assert_close(both, torch.tensor([[1.0, 1.0, 1.5, 1.5]]).expand(3, 4))
    with pytest.raises(ValueError, match="pooling"):
        backbone_feature_fn(backbone, "max")
