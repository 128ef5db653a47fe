"""Photometric g: color jitter and gaussian blur, batched, on normalized images.

Both work in [0, 1] RGB (de-normalized with the ImageNet statistics) and return normalized images.
Color jitter: brightness, contrast, saturation factors 1 + b, 1 + c, 1 + s (b, c, s ∈ [-0.4, 0.4])
and a hue rotation by h turns (h ∈ [-0.1, 0.1]), applied in that fixed order, clamped to [0, 1].
Blur: σ ∈ [0.1, 2] pixels of the crop (the paper's range, not rescaled: unlike translation,
DESIGN gives no resolution rule for σ, and a rescaled σ would be invisible on 32 px demo crops);
σ = 0 is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD
from data_pipeline.transforms.base import EquiTransform, register_transform

_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ and back (float64, inverted once here: `torch.linalg.inv` on a GPU syncs the host).
_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return mean, std


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    w = rgb.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True)


def _hue_rotate(rgb: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `turns` (B,) full turns: a rotation of the chroma plane in YIQ space."""
    to_yiq = _TO_YIQ.to(rgb.device, rgb.dtype)
    from_yiq = _FROM_YIQ.to(rgb.device, rgb.dtype)  # inverted once on the CPU: no device sync
    ang = 2 * math.pi * turns
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = torch.zeros(turns.shape[0], 3, 3, device=rgb.device, dtype=rgb.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", mat, rgb)


@register_transform("color")
class ColorJitter(EquiTransform):
    """Brightness, contrast, saturation ∈ [-0.4, 0.4] (factor 1 + x) and hue ∈ [-0.1, 0.1] turns."""

    param_names = ("brightness", "contrast", "saturation", "hue")

    @property
    def param_ranges(self) -> tuple[tuple[float, float], ...]:
        return ((-0.4, 0.4), (-0.4, 0.4), (-0.4, 0.4), (-0.1, 0.1))

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        mean, std = _stats(images)
        x = images * std + mean
        params = params.to(images.device)
        p = params.to(images.dtype).view(-1, 4, 1, 1, 1)
        x = (x * (1 + p[:, 0])).clamp(0, 1)
        gray_mean = _gray(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - gray_mean) * (1 + p[:, 1]) + gray_mean).clamp(0, 1)
        gray = _gray(x)
        x = ((x - gray) * (1 + p[:, 2]) + gray).clamp(0, 1)
        x = _hue_rotate(x, params[:, 3].to(images.dtype)).clamp(0, 1)
        return (x - mean) / std


@register_transform("blur")
class GaussianBlur(EquiTransform):
    """Isotropic gaussian blur, σ ∈ [0.1, 2] px, reflect padding."""

    param_names = ("sigma_px",)

    @property
    def param_ranges(self) -> tuple[tuple[float, float], ...]:
        return ((0.1, 2.0),)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        sigma = params[:, 0].to(images.device).to(images.dtype).clamp_min(1e-6)
        radius = max(1, math.ceil(3 * self.param_ranges[0][1]))
        radius = min(radius, (min(h, w) - 1) // 2) if min(h, w) > 2 else 0
        if radius == 0:
            return images
        offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 2r+1); σ→0 gives a delta
        kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, 2r+1)
        x = images.reshape(1, b * c, h, w)
        x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
        x = F.conv2d(x, kernel.view(b * c, 1, 1, -1), groups=b * c)
        x = F.pad(x, (0, 0, radius, radius), mode="reflect")
        x = F.conv2d(x, kernel.view(b * c, 1, -1, 1), groups=b * c)
        return x.view(b, c, h, w)
