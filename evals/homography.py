"""Homography estimation on frozen patch features (S-COCO style, as in DeTone et al. 2016).

A square patch of side P is cut from the middle of a larger source image (a margin m >= ρ on
every side). Its four corners are moved by independent offsets uniform in [-ρ, ρ]² (ρ = P/4 by
default); the homography H that maps the patch's corners onto the moved ones resamples the
source into the warped patch: warped(u, v) = source(H(u, v)). A 3-layer conv head reads the
per-patch concatenation [f(original) ; f(warped)] of the frozen patch features and regresses the
8 corner offsets. Metric: the mean corner error (MCE), the mean Euclidean distance between
predicted and true corners, in pixels of the patch, on held-out photos. The identity predictor
(zero offsets) scores E‖U‖·ρ ≈ 0.765ρ for U uniform on [-1, 1]².

Our choices: the head is conv3x3 (stride 1) -> conv3x3 (stride 2) -> conv3x3 (stride 2), ReLU,
then a 2x2 adaptive average pool and one linear layer to the 8 offsets; inputs standardized per channel with train
statistics; Adam with a cosine schedule on the MSE of offsets/ρ; the original patch's features
are computed once per source image and shared by its `views` warps. Model selection as in the
equivariance probe: `val_fraction` of the train photos (all their warps) is held out and the
head of the epoch with the lowest validation MCE is kept, so a small train set makes the head
stop early instead of overfitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evals.providers import FeatureProvider, extract_patch_features


def patch_corners(patch_px: int, margin: float = 0.0) -> Tensor:
    """The corners of the patch in source pixel coordinates (edges at integers) -> (4, 2) (x, y),
    in the order top-left, top-right, bottom-right, bottom-left."""
    p = float(patch_px)
    return torch.tensor([[0.0, 0.0], [p, 0.0], [p, p], [0.0, p]]) + margin


def sample_offsets(n: int, rho: float, generator: torch.Generator) -> Tensor:
    """Corner offsets uniform in [-ρ, ρ] per coordinate -> (n, 4, 2) pixels."""
    return (torch.rand(n, 4, 2, generator=generator) * 2 - 1) * rho


def homography_from_corners(src: Tensor, dst: Tensor) -> Tensor:
    """The homographies H with H(src_k) = dst_k for the 4 corners (DLT with h33 = 1).

    Args:
        src: (n, 4, 2) or (4, 2) points (x, y).
        dst: (n, 4, 2) points.

    Returns:
        (n, 3, 3) float64 matrices acting on homogeneous column vectors (x, y, 1).
    """
    src = src.double().expand_as(dst)
    dst = dst.double()
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)  # (n, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (n, 8, 8)
    b = torch.cat([u, v], dim=1)  # (n, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def warp_patches(
    sources: Tensor, offsets: Tensor, patch_px: int, margin: int
) -> tuple[Tensor, Tensor]:
    """Cut the central patch of each source and its homography-warped version.

    Args:
        sources: (n, C, S, S) images, S = patch_px + 2 * margin.
        offsets: (n, 4, 2) corner offsets in pixels (|offset| <= margin keeps samples inside).
        patch_px: P, the side of the patches.
        margin: m, the source border around the patch.

    Returns:
        original (n, C, P, P) (the exact central crop) and warped (n, C, P, P), where warped
        pixel (u, v) is the bilinear sample of the source at H(u + ½, v + ½) and H maps the
        patch corners to the corners + offsets (both in source pixels).
    """
    n, _, side_h, side_w = sources.shape
    if side_h != patch_px + 2 * margin or side_w != side_h:
        raise ValueError(
            f"sources must be square with side patch_px + 2*margin = {patch_px + 2 * margin}, "
            f"got {side_h}x{side_w}"
        )
    original = sources[:, :, margin : margin + patch_px, margin : margin + patch_px]
    corners = patch_corners(patch_px)
    moved = corners + margin + offsets.double()
    h = homography_from_corners(corners, moved)  # (n, 3, 3), patch coords -> source coords
    centres = torch.arange(patch_px, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).view(-1, 3)  # (P², 3)
    mapped = torch.einsum("nij,pj->npi", h, pts)
    xy = mapped[..., :2] / mapped[..., 2:]  # (n, P², 2) source pixel coordinates
    grid = (xy / side_w * 2 - 1).view(n, patch_px, patch_px, 2).to(sources.dtype)
    warped = F.grid_sample(
        sources, grid.to(sources.device), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return original, warped


def mean_corner_error(pred: Tensor, target: Tensor) -> float:
    """Mean over samples and the 4 corners of ‖pred − target‖₂; (n, 4, 2) pixels -> pixels."""
    return float((pred.double() - target.double()).norm(dim=-1).mean())


class HomographyHead(nn.Module):
    """(B, 2D, h, w) paired patch features -> (B, 4, 2) corner offsets (in units of ρ)."""

    def __init__(self, in_channels: int, channels: int = 128) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.out = nn.Linear(4 * channels, 8)

    def forward(self, feats: Tensor) -> Tensor:
        return self.out(self.convs(feats).flatten(1)).view(-1, 4, 2)


@dataclass
class HomographyPairs:
    """Original/warped patches of `sources` and their offsets; image i's views are rows
    i, i + n, i + 2n, ... (view-major)."""

    original: Tensor  # (n, 3, P, P), one per source image
    warped: Tensor  # (n * views, 3, P, P)
    offsets: Tensor  # (n * views, 4, 2) pixels


def make_pairs(
    sources: Tensor, patch_px: int, rho: float, views: int, generator: torch.Generator
) -> HomographyPairs:
    """`views` random corner perturbations of each of the (n, 3, S, S) sources."""
    margin = (sources.shape[-1] - patch_px) // 2
    if margin < rho:
        raise ValueError(f"source margin {margin} px is smaller than rho = {rho} px")
    offsets = sample_offsets(sources.shape[0] * views, rho, generator)
    warped = []
    for v in range(views):
        rows = offsets[v * sources.shape[0] : (v + 1) * sources.shape[0]]
        original, w = warp_patches(sources, rows, patch_px, margin)
        warped.append(w)
    return HomographyPairs(original.contiguous(), torch.cat(warped), offsets)


def pair_features(
    provider: FeatureProvider,
    pairs: HomographyPairs,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """[f(original) ; f(warped)] per patch -> (n * views, 2D, h, w) on the CPU."""
    plain = extract_patch_features(provider, pairs.original, batch_size, device)
    warped = extract_patch_features(provider, pairs.warped, batch_size, device)
    views = warped.shape[0] // plain.shape[0]
    return torch.cat([plain.repeat(views, 1, 1, 1), warped], dim=1)


def homography_mce(
    provider: FeatureProvider,
    train_sources: Tensor,
    test_sources: Tensor,
    *,
    patch_px: int,
    rho: float | None = None,
    train_views: int = 2,
    epochs: int = 30,
    channels: int = 64,
    lr: float = 1e-3,
    batch_size: int = 64,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Train the head on train photos, report the mean corner error on held-out photos.

    Args:
        provider: frozen features; patch features (B, D, h, w) of (B, 3, P, P) patches.
        train_sources: (N, 3, S, S) normalized source images, S = P + 2m with m >= ρ.
        test_sources: (M, 3, S, S) held-out sources (one warp each).
        patch_px: P.
        rho: maximal corner offset in pixels; None: P / 4.
        train_views: warps per train source.
        epochs: passes of Adam over the train pairs.
        channels: width of the conv head.
        lr: Adam learning rate.
        batch_size: pairs per step (and images per feature batch x 4).
        val_fraction: share of train photos held out to pick the head's best epoch (0: last).
        seed: seed of the offsets, the head's initialization and the batch order.
        device: where features are extracted and the head trains.

    Returns:
        {"mce": px, "identity_mce": px of the zero-offset predictor on the same test pairs,
        "rho": px, "n_train", "n_test"}.
    """
    rho = patch_px / 4 if rho is None else float(rho)
    generator = torch.Generator().manual_seed(seed)
    train = make_pairs(train_sources, patch_px, rho, train_views, generator)
    test = make_pairs(test_sources, patch_px, rho, 1, generator)
    feat_batch = batch_size * 4
    x_train = pair_features(provider, train, feat_batch, device)
    x_test = pair_features(provider, test, feat_batch, device)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    # Validation rows: every warp of the last `val_fraction` of the train photos.
    n_src = train_sources.shape[0]
    n_val_src = int(round(n_src * val_fraction)) if n_src >= 10 else 0
    val_rows = torch.zeros(x_train.shape[0], dtype=torch.bool)
    val_rows.view(train_views, n_src)[:, n_src - n_val_src :] = n_val_src > 0
    y_train = (train.offsets / rho).float()
    x_val, y_val = x_train[val_rows], train.offsets[val_rows]
    x_fit, y_fit = x_train[~val_rows], y_train[~val_rows]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = HomographyHead(x_train.shape[1], channels).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * math.ceil(x_fit.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    best: tuple[float, dict[str, Tensor]] | None = None
    for _ in range(epochs):
        head.train()
        for idx in torch.randperm(x_fit.shape[0], generator=generator).split(batch_size):
            loss = F.mse_loss(head(x_fit[idx].to(device)), y_fit[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if n_val_src:
            score = mean_corner_error(_predict(head, x_val, batch_size, device) * rho, y_val)
            if best is None or score < best[0]:
                best = (score, {k: v.detach().clone() for k, v in head.state_dict().items()})
    if best is not None:
        head.load_state_dict(best[1])
    pred = _predict(head, x_test, batch_size, device) * rho
    return {
        "mce": mean_corner_error(pred, test.offsets),
        "identity_mce": mean_corner_error(torch.zeros_like(test.offsets), test.offsets),
        "val_mce": best[0] if best is not None else None,
        "rho": rho,
        "n_train": int(x_fit.shape[0]),
        "n_test": int(x_test.shape[0]),
    }


def _predict(head: nn.Module, x: Tensor, batch_size: int, device: torch.device | str) -> Tensor:
    """Head outputs (n, 4, 2) in units of ρ, on the CPU."""
    head.eval()
    with torch.no_grad():
        return torch.cat([head(b.to(device)).cpu() for b in x.split(batch_size * 4)])
