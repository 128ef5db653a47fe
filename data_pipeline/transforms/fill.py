"""What a geometric g_θ's zero fill shows, and how to hide it (imports only torch).

A rotation or shift with zero fill leaves black corners or strips whose shape alone gives θ
away. `inscribed_disk` is the mask that hides them: every pixel outside the disk inscribed in
the image, shrunk by `DISK_MARGIN`, is set to zero whatever θ was, so what is left tells θ only
through the content. The equivariance probe's "disk" view and the training's `recon.fill=disk`
use the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

DISK_MARGIN = 1.5
"""Pixels between the disk and the image border: bilinear resampling pulls the zero fill into
the outermost pixel ring, whose θ-dependent pattern would otherwise give θ away."""

FILLS = ("zero", "disk")
"""`recon.fill`: "zero" shows the fill (the paper); "disk" masks every global view of the step
(v1, v2 = g_θ(u), the targets u_k and u itself) to the inscribed disk."""


def inscribed_disk(size: int, margin: float = 0.0, device: torch.device | str = "cpu") -> Tensor:
    """(size, size) float mask: 1 where the pixel centre is inside the inscribed disk shrunk by
    `margin` pixels, else 0."""
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) - size / 2
    radius = size / 2 - margin
    return ((c[:, None] ** 2 + c[None, :] ** 2) <= radius**2).float()


def mask_to_disk(images: Tensor, margin: float = DISK_MARGIN) -> Tensor:
    """(B, C, H, W) images (H == W) times the inscribed disk shrunk by `margin` pixels."""
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"the inscribed disk needs square images, got {h}x{w}")
    return images * inscribed_disk(h, margin, images.device).to(images.dtype)


def disk_margin(transform: Any) -> float:
    """Margin (pixels) of the disk that hides every fill of this g_θ: `DISK_MARGIN` plus the
    largest shift it can make (a rotation about the centre maps the disk onto itself; a shift
    t moves it by |t|). `transform` is an `EquiTransform` (its `param_names`, `param_ranges`)."""
    ranges = dict(zip(transform.param_names, transform.param_ranges))
    shifts = [max(abs(lo), abs(hi)) for name, (lo, hi) in ranges.items() if "shift" in name]
    return DISK_MARGIN + math.hypot(*shifts) if shifts else DISK_MARGIN


def hide_fill(transform: Any, images: Sequence[Tensor]) -> list[Tensor]:
    """Each (B, C, S, S) image batch masked to the disk that hides every fill of `transform`
    (`disk_margin`), one mask for all: what `recon.fill=disk` shows the model."""
    size = images[0].shape[-1]
    disk = inscribed_disk(size, disk_margin(transform), images[0].device)
    return [x * disk.to(x.dtype) for x in images]
