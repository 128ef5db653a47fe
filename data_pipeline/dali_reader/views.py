"""One DINOv2 view as a DALI graph: random-resized crop, colour jitter, grayscale, blur,
solarization, flip and normalization (see `data_pipeline.dali_reader` for the parameters)."""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline.augment import BLUR_SIGMA, blur_kernel_size
from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD

ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
HUE_DEG = 0.1 * 360.0  # torchvision hue 0.1 (turns) -> DALI degrees


def _uniform(fn: Any, low: float, high: float) -> Any:
    return fn.random.uniform(range=[low, high])


def _coin(fn: Any, types: Any, probability: float) -> Any:
    """A per-sample 0.0/1.0 float with P(1) = probability."""
    return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)


def blur_kernels(size: int, blur_p: float) -> tuple[Any, Any]:
    """Per-sample separable gaussian kernels ((1, w) and (w, 1), float32, CPU nodes).

    sigma ~ U(0.1, 2) px; the window is the torch path's kernel (``blur_kernel_size(size)``)
    cut to ``2 * ceil(3 sigma) + 1`` taps (the taps dropped hold < 0.3% of the weight); a sample
    that is not blurred (probability ``1 - blur_p``) gets the 1-tap identity kernel.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    kernel = blur_kernel_size(size)
    sigma = _uniform(fn, *BLUR_SIGMA)
    window = dmath.min(2.0 * dmath.ceil(3.0 * sigma) + 1.0, float(kernel))
    if blur_p < 1:
        window = (window - 1.0) * _coin(fn, types, blur_p) + 1.0
    offsets = np.arange(kernel, dtype=np.float32)[None, :] - kernel // 2
    weights = dmath.exp(types.Constant(offsets * offsets) * (-0.5 / (sigma * sigma)))
    start = fn.cast((float(kernel) - window) * 0.5, dtype=types.INT32)
    weights = fn.slice(weights, start=start, shape=fn.cast(window, dtype=types.INT32), axes=[1])
    row = weights / fn.reductions.sum(weights)
    return row, fn.transpose(row, perm=[1, 0])


def multicrop_view(
    images: Any,
    size: int,
    scale: tuple[float, float],
    *,
    blur_p: float,
    solarize_p: float = 0.0,
    arithmetic_contrast: bool | None = None,
) -> Any:
    """One DINOv2 view of decoded HWC uint8 ``images`` (a DALI node) -> (3, size, size) float32.

    Works on CPU and GPU nodes. The colour ops run on uint8. ``arithmetic_contrast`` (default:
    on GPU nodes) computes brightness/contrast as an arithmetic expression instead of
    ``fn.brightness_contrast``, whose per-sample ``contrast_center`` must live on the CPU.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    on_gpu = images.device == "gpu"
    if arithmetic_contrast is None:
        arithmetic_contrast = on_gpu
    crop = fn.random_resized_crop(
        images,
        size=[size, size],
        random_area=list(scale),
        random_aspect_ratio=list(ASPECT_RATIO),
        interp_type=types.INTERP_CUBIC,
        antialias=True,
    )
    # Colour jitter (p 0.8): brightness b and contrast c around the crop's mean grey m,
    # b * (m + c (x - m)) (torchvision's order and pivot), then saturation and hue (YIQ);
    # grayscale (p 0.2) zeroes the saturation.
    jitter = _coin(fn, types, 0.8)
    brightness = 1.0 + jitter * _uniform(fn, -0.4, 0.4)
    contrast = 1.0 + jitter * _uniform(fn, -0.4, 0.4)
    luma = types.Constant(np.float32(GRAY_WEIGHTS))
    if arithmetic_contrast:
        channel_mean = fn.reductions.mean(crop, axes=[0, 1], keep_dims=True)
        gray_mean = fn.reductions.sum(channel_mean * luma, axes=[2], keep_dims=True)
        mixed = crop * (brightness * contrast) + gray_mean * (brightness * (1.0 - contrast))
        crop = fn.cast(dmath.clamp(mixed, 0.0, 255.0), dtype=types.UINT8)
    else:
        gray_mean = fn.reductions.sum(fn.reductions.mean(crop, axes=[0, 1]) * luma)
        crop = fn.brightness_contrast(
            crop, brightness=brightness, contrast=contrast, contrast_center=gray_mean
        )
    saturation = (1.0 + jitter * _uniform(fn, -0.2, 0.2)) * (1.0 - _coin(fn, types, 0.2))
    crop = fn.hsv(crop, hue=jitter * _uniform(fn, -HUE_DEG, HUE_DEG), saturation=saturation)
    if blur_p > 0:
        row, column = blur_kernels(size, blur_p)
        if on_gpu:
            row, column = row.gpu(), column.gpu()
        crop = fn.filter(fn.filter(crop, row), column)  # reflect-101 borders, as torchvision
    if solarize_p > 0:  # uint8: 255 - x == x ^ 255
        solarize = fn.cast(fn.random.coin_flip(probability=solarize_p), dtype=types.UINT8)
        threshold = types.Constant(128, dtype=types.UINT8)
        crop = crop ^ ((crop >= threshold) * solarize * types.Constant(255, dtype=types.UINT8))
    return fn.crop_mirror_normalize(
        crop,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in IMAGENET_MEAN],
        std=[255.0 * s for s in IMAGENET_STD],
        mirror=fn.random.coin_flip(probability=0.5),
    )


__all__ = ["blur_kernels", "multicrop_view"]
