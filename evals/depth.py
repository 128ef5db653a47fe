"""Linear monocular depth estimation on frozen patch features, and its depth shards.

Protocol (after DINOv2's linear depth evaluation, simplified to regression): a 1×1 convolution
(a linear map per patch) turns the standardized frozen patch features (B, D, h, w) into one
log-depth value per patch (B, 1, h, w), bilinearly upsampled to the pixels and trained with the
mean squared error of log depth over the valid pixels (Adam, cosine schedule). Predictions are
``exp`` of the output, clamped to ``[min_depth_m, max_depth_m]``.

Metrics, as reported for NYU Depth v2 (Eigen et al. 2014; DINOv2 Table 11): per test image over
its valid pixels (``min_depth_m < target < max_depth_m``), then averaged over the images:

- ``rmse``: sqrt(mean((pred - gt)²)), metres;
- ``abs_rel``: mean(|pred - gt| / gt);
- ``delta1``: share of pixels with max(pred / gt, gt / pred) < 1.25 (also ``delta2``/``delta3``
  with 1.25² and 1.25³, ``rmse_log`` and ``log10`` in the details).

Data: ``<root>/depth/{train,val}-*.tar`` shards, each sample an RGB image (``jpg``/``png``) and
its depth (``depth.png``: 16-bit PNG, depth × ``scale`` with ``scale`` from the manifest's
``depth`` entry, 1000 = millimetres by default; 0 = no measurement). Built by
``equirecon data build-demo`` (rendered scenes, `data_pipeline.depth_scenes`) or
``equirecon data build --format nyu-depth``. Images and depth maps are resized to a square
side (bicubic / nearest), and the metrics are computed at that side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipeline.shards import resolve_shards
from evals.annotated import load_annotated
from evals.providers import FeatureProvider, extract_patch_features

SUBSET = "depth"
DEPTH_KEY = "depth.png"
DEFAULT_SCALE = 1000.0  # stored units per metre (millimetres)
DEFAULT_MIN_DEPTH_M = 1e-3
DEFAULT_MAX_DEPTH_M = 10.0  # NYU Depth v2's evaluation cap


def depth_settings(path: str | Path) -> dict[str, float]:
    """``scale``, ``min_depth_m`` and ``max_depth_m`` of a dataset root's depth subset.

    From ``manifest.json``'s ``depth`` entry; NYU's values (mm, 1e-3 m, 10 m) where absent.
    """
    settings = {
        "scale": DEFAULT_SCALE,
        "min_depth_m": DEFAULT_MIN_DEPTH_M,
        "max_depth_m": DEFAULT_MAX_DEPTH_M,
    }
    manifest = Path(path) / "manifest.json"
    if manifest.is_file():
        entry = json.loads(manifest.read_text()).get(SUBSET) or {}
        settings.update({k: float(entry[k]) for k in settings if k in entry})
    return settings


def load_depth(
    path: str | Path, split: str, size: int, max_images: int | None = None
) -> tuple[Tensor, Tensor]:
    """Images and depth maps of a dataset root's depth subset, in shard order.

    Args:
        path: dataset root holding ``depth/<split>-*.tar``.
        split: "train" or "val".
        size: output side; images are resized bicubic, depth maps nearest.
        max_images: stop after this many samples.

    Returns:
        images (N, 3, size, size) float32 ImageNet-normalized, depth (N, size, size) float32
        metres (0 = no measurement).
    """
    try:
        shards = resolve_shards(str(path), subset=SUBSET, split=split)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}. The depth task needs a depth subset: rebuild the demo with "
            f"`equirecon data build-demo --out {path}` or convert NYU Depth v2 with "
            f"`equirecon data build --format nyu-depth --src NYU_ROOT --out {path}`"
        ) from None
    scale = depth_settings(path)["scale"]
    return load_annotated(
        shards,
        DEPTH_KEY,
        size,
        max_images,
        "depth",
        lambda depth: np.asarray(depth, dtype=np.float32) / scale,
    )


METRIC_NAMES = ("rmse", "abs_rel", "delta1", "delta2", "delta3", "rmse_log", "log10")


def per_image_depth_metrics(
    pred: Tensor,
    target: Tensor,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
) -> tuple[dict[str, Tensor], Tensor]:
    """The metrics of each image over its valid pixels.

    Args:
        pred: (B, H, W) predicted depth in metres (clamped to the range here).
        target: (B, H, W) true depth in metres; pixels outside (min, max) are not scored.

    Returns:
        ({name: (B,) float64}, (B,) bool: the image has at least one valid pixel). Values of
        images without one are 0.
    """
    pred = pred.double().clamp(min_depth_m, max_depth_m)
    target = target.double()
    valid = (target > min_depth_m) & (target < max_depth_m)
    count = valid.flatten(1).sum(1)
    safe_target = torch.where(valid, target, torch.ones_like(target))
    safe_pred = torch.where(valid, pred, torch.ones_like(pred))
    ratio = torch.maximum(safe_pred / safe_target, safe_target / safe_pred)

    def mean(values: Tensor) -> Tensor:
        return torch.where(valid, values, 0.0).flatten(1).sum(1) / count.clamp_min(1)

    metrics = {
        "rmse": mean((safe_pred - safe_target) ** 2).sqrt(),
        "abs_rel": mean((safe_pred - safe_target).abs() / safe_target),
        "delta1": mean((ratio < 1.25).double()),
        "delta2": mean((ratio < 1.25**2).double()),
        "delta3": mean((ratio < 1.25**3).double()),
        "rmse_log": mean((safe_pred.log() - safe_target.log()) ** 2).sqrt(),
        "log10": mean((safe_pred.log10() - safe_target.log10()).abs()),
    }
    return metrics, count > 0


def depth_metrics(
    pred: Tensor,
    target: Tensor,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
) -> dict[str, float]:
    """Metrics of (B, H, W) depth predictions, averaged over the images with valid pixels."""
    per_image, scored = per_image_depth_metrics(pred, target, min_depth_m, max_depth_m)
    if not bool(scored.any()):
        raise ValueError(
            f"no valid depth pixel (all targets outside ({min_depth_m}, {max_depth_m}))"
        )
    return {name: float(values[scored].mean()) for name, values in per_image.items()}


def depth_linear(
    provider: FeatureProvider,
    train_images: Tensor,
    train_depth: Tensor,
    test_images: Tensor,
    test_depth: Tensor,
    *,
    epochs: int = 20,
    lr: float = 1e-2,
    batch_size: int = 64,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float = DEFAULT_MAX_DEPTH_M,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Train a 1×1-conv log-depth head on frozen patch features; depth metrics on the test set.

    Args:
        provider: frozen features, patch grid (B, D, h, w) of (B, 3, H, W) images.
        train_images: (N, 3, H, W) normalized; train_depth (N, H, W) metres (0 = invalid).
        test_images: (M, 3, H, W); test_depth (M, H, W).
        epochs: passes of Adam over the train images.
        lr: Adam learning rate (cosine decay).
        batch_size: images per step.
        min_depth_m: valid targets are above this; predictions are clamped to it.
        max_depth_m: valid targets are below this; predictions are clamped to it.
        seed: seed of the head's initialization and the batch order.
        device: where features are extracted and the head trains.

    Returns:
        {"rmse", "abs_rel", "delta1", "delta2", "delta3", "rmse_log", "log10",
        "n_train", "n_test", "n_scored"}.
    """
    generator = torch.Generator().manual_seed(seed)
    x_train = extract_patch_features(provider, train_images, batch_size * 4, device)
    x_test = extract_patch_features(provider, test_images, batch_size * 4, device)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    train_valid = (train_depth > min_depth_m) & (train_depth < max_depth_m)
    if not bool(train_valid.any()):
        raise ValueError("the depth train set has no valid pixel")
    mean_log = float(train_depth[train_valid].log().mean())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Conv2d(x_train.shape[1], 1, kernel_size=1)
    nn.init.constant_(head.bias, mean_log)  # start from the mean log depth
    head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * math.ceil(x_train.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    size = tuple(train_depth.shape[-2:])
    for _ in range(epochs):
        for idx in torch.randperm(x_train.shape[0], generator=generator).split(batch_size):
            log_pred = _upsample(head(x_train[idx].to(device)), size)[:, 0]
            target, valid = train_depth[idx].to(device), train_valid[idx].to(device)
            if not bool(valid.any()):
                continue
            loss = (log_pred[valid] - target[valid].log()).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    sums = dict.fromkeys(METRIC_NAMES, 0.0)
    scored_images = 0
    with torch.no_grad():
        for x, y in zip(x_test.split(batch_size), test_depth.split(batch_size)):
            pred = _upsample(head(x.to(device)), tuple(y.shape[-2:]))[:, 0].exp().cpu()
            per_image, scored = per_image_depth_metrics(pred, y, min_depth_m, max_depth_m)
            for name in METRIC_NAMES:
                sums[name] += float(per_image[name][scored].sum())
            scored_images += int(scored.sum())
    if scored_images == 0:
        raise ValueError("the depth test set has no valid pixel")
    return {
        **{name: total / scored_images for name, total in sums.items()},
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "n_scored": scored_images,
    }


def _upsample(x: Tensor, size: tuple[int, ...]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
