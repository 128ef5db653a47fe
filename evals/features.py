"""Frozen-feature extraction shared by the evaluations (kNN, linear probe, equivariance R²)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FeatureFn = Callable[[Tensor], Tensor]
"""Maps a batch of normalized images (B, 3, H, W) to one feature vector per image (B, D)."""

POOLINGS = ("cls", "cls+mean", "mean")
EQUIVARIANCE_FEATURES = ("global", "grid", "equi")


def extract_features(
    feature_fn: FeatureFn,
    images: Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> Tensor:
    """Run `feature_fn` over `images` in batches, without autograd.

    Args:
        feature_fn: (B, 3, H, W) normalized images -> (B, D) features.
        images: (N, 3, H, W) normalized images, on any device (moved batch by batch).
        batch_size: images per call of `feature_fn`.
        device: where `feature_fn` runs.
        progress: description of a tqdm progress bar; None shows no bar.

    Returns:
        (N, D) float32 features on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, images.shape[0], batch_size)
    if progress is not None:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch")
    chunks: list[Tensor] = []
    with torch.inference_mode():
        for start in starts:
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            chunks.append(to_cpu_features(feature_fn(batch), batch.shape[0]))
    if not chunks:
        raise ValueError("extract_features got no images (N = 0)")
    # Concatenated outside inference mode: the result is an ordinary tensor usable in autograd.
    return torch.cat(chunks)


def to_cpu_features(feats: Tensor, batch_size: int) -> Tensor:
    """Check that a FeatureFn output is (batch_size, D); return it as float32 on the CPU."""
    if feats.ndim != 2 or feats.shape[0] != batch_size:
        raise ValueError(
            f"feature_fn must return (B, D) = ({batch_size}, D) features, got {tuple(feats.shape)}"
        )
    return feats.float().cpu()


def backbone_feature_fn(
    backbone: nn.Module,
    pooling: str = "cls+mean",
    num_prefix_tokens: int | None = None,
) -> FeatureFn:
    """Wrap a ViT backbone into a FeatureFn (puts the backbone in eval mode).

    The backbone maps (B, 3, H, W) images to tokens (B, 1 + R + N, D): token 0 is CLS, then R
    register tokens, then N patch tokens.

    Args:
        backbone: the frozen encoder.
        pooling: "cls" -> CLS (B, D); "cls+mean" -> [CLS; mean of patch tokens] (B, 2D);
            "mean" -> mean of patch tokens (B, D).
        num_prefix_tokens: 1 + R. None reads `backbone.num_prefix_tokens` (timm's attribute),
            falling back to 1.

    Returns:
        The feature function.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    if num_prefix_tokens is None:
        num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
    if num_prefix_tokens < 1:
        raise ValueError(f"num_prefix_tokens must be >= 1 (CLS first), got {num_prefix_tokens}")
    prefix = num_prefix_tokens
    backbone.eval()

    def feature_fn(images: Tensor) -> Tensor:
        tokens = backbone(images)
        if tokens.ndim != 3 or (pooling != "cls" and tokens.shape[1] <= prefix):
            raise ValueError(
                f"backbone must return tokens (B, {prefix} + N, D) with N >= 1 patch tokens, "
                f"got {tuple(tokens.shape)}"
            )
        cls = tokens[:, 0]
        if pooling == "cls":
            return cls
        patch_mean = tokens[:, prefix:].mean(dim=1)
        if pooling == "mean":
            return patch_mean
        return torch.cat([cls, patch_mean], dim=-1)

    return feature_fn


def pool_patch_grid(patch_grid: Tensor, grid: int) -> Tensor:
    """Average-pool a patch-feature map to grid x grid cells and flatten it, layout kept.

    Args:
        patch_grid: (B, D, h, w) features of the patches on their grid.
        grid: side of the pooled grid (adaptive average pooling); 0 keeps the full h x w grid.

    Returns:
        (B, D * g * g) features, channel-major (all cells of channel 0 first).
    """
    if patch_grid.ndim != 4:
        raise ValueError(f"patch_grid must be (B, D, h, w), got {tuple(patch_grid.shape)}")
    if grid < 0:
        raise ValueError(f"grid must be >= 0 (0: the full patch grid), got {grid}")
    if grid and grid > min(patch_grid.shape[-2:]):
        raise ValueError(f"grid {grid} exceeds the patch grid {tuple(patch_grid.shape[-2:])}")
    if grid:
        patch_grid = F.adaptive_avg_pool2d(patch_grid, grid)
    return patch_grid.flatten(1)
