"""Geometric g: rotation, translation and SE(2), one bilinear resampling with zero fill.

SE(2) is parametrized by exponential coordinates (φ, t_x, t_y): g_θ = exp(φ·J + t), the
one-parameter subgroup through the Lie-algebra element (φ, t). Hence g_{aθ}∘g_{bθ} = g_{(a+b)θ}
exactly, and "θ/3" (each parameter scaled linearly from 0) composes three times to g_θ. For pure
rotation or pure translation this is the usual rotation about the crop centre / shift in pixels.
Translations are given in pixels at 224² and scale with the crop size (paper Table 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data_pipeline.transforms.base import EquiTransform, register_transform

REFERENCE_SIZE = 224


def se2_matrices(angle_deg: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """exp of the se(2) element (φ, t) as (B, 3, 3) homogeneous matrices in centred pixel coords.

    Args:
        angle_deg: (B,) rotation φ in degrees. In image coordinates (x right, y down) a positive
            angle turns x toward y, i.e. clockwise as displayed (opposite to torchvision's rotate).
        shift_px: (B, 2) translation velocity (t_x, t_y) in pixels.
    """
    phi = torch.deg2rad(angle_deg.float())
    cos, sin = torch.cos(phi), torch.sin(phi)
    small = phi.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(phi), phi)
    # V = [[a, -b], [b, a]] with a = sin φ / φ, b = (1 - cos φ) / φ (series near 0).
    a = torch.where(small, 1 - phi**2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, phi / 2 - phi**3 / 24, (1 - torch.cos(safe)) / safe)
    tx, ty = shift_px[:, 0].float(), shift_px[:, 1].float()
    mat = torch.zeros(phi.shape[0], 3, 3, device=phi.device)
    mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1] = cos, -sin, sin, cos
    mat[:, 0, 2] = a * tx - b * ty
    mat[:, 1, 2] = b * tx + a * ty
    mat[:, 2, 2] = 1
    return mat


def warp_se2(images: torch.Tensor, angle_deg: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, H, W) images by g = exp(φ, t) (bilinear, zero fill outside)."""
    b, _, h, w = images.shape
    # grid_sample maps output -> input coordinates, i.e. needs g^{-1} = exp(-(φ, t)).
    inv = se2_matrices(-angle_deg, -shift_px).to(images.device)
    # Centred pixel coords -> normalized [-1, 1] coords (align_corners=False): x_n = 2 x / W.
    scale = torch.tensor([2.0 / w, 2.0 / h, 1.0], device=images.device)
    inv_n = scale[:, None] * inv * (1.0 / scale)[None, :]
    grid = F.affine_grid(
        inv_n[:, :2, :].to(images.dtype), [b, images.shape[1], h, w], align_corners=False
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _GeometricTransform(EquiTransform):
    max_angle_deg = 45.0
    max_shift_px_224 = 10.0

    @property
    def max_shift_px(self) -> float:
        return self.max_shift_px_224 * self.image_size / REFERENCE_SIZE

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        angle, shift = self._split(params)
        return warp_se2(images, angle, shift)


@register_transform("rotation")
class Rotation(_GeometricTransform):
    """Rotation about the crop centre by φ ∈ [-45°, 45°]."""

    param_names = ("angle_deg",)

    @property
    def param_ranges(self) -> tuple[tuple[float, float], ...]:
        return ((-self.max_angle_deg, self.max_angle_deg),)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[:, 0], params.new_zeros(params.shape[0], 2)


@register_transform("translation")
class Translation(_GeometricTransform):
    """Shift by (t_x, t_y) ∈ [-10, 10]² pixels at 224² (scaled to the crop size)."""

    param_names = ("shift_x_px", "shift_y_px")

    @property
    def param_ranges(self) -> tuple[tuple[float, float], ...]:
        s = self.max_shift_px
        return ((-s, s), (-s, s))

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params.new_zeros(params.shape[0]), params[:, 0:2]


@register_transform("se2")
class SE2(_GeometricTransform):
    """Rotation and translation together, exponential coordinates (φ, t_x, t_y)."""

    param_names = ("angle_deg", "shift_x_px", "shift_y_px")

    @property
    def param_ranges(self) -> tuple[tuple[float, float], ...]:
        s = self.max_shift_px
        return ((-self.max_angle_deg, self.max_angle_deg), (-s, s), (-s, s))

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[:, 0], params[:, 1:3]
