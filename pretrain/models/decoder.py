"""The light reconstruction decoder D_k: per-patch linear, patch grid, four convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReconDecoder(nn.Module):
    """Predict an image (B, 3, H, W) from per-patch features (B, N, in_dim) on an h×w grid.

    One linear layer per patch token to `channels`, reshape to (B, channels, h, w), then four
    3×3 convolutions; before each, the map is resized bilinearly so that the four steps reach
    (H, W) geometrically (for patch 16: 2× per step). Widths halve per layer (min 16); GELU
    between layers; the last layer outputs 3 channels in the normalized pixel space.
    """

    def __init__(
        self, in_dim: int, out_size: tuple[int, int], grid: tuple[int, int], channels: int = 256
    ) -> None:
        super().__init__()
        self.out_size, self.grid = out_size, grid
        self.embed = nn.Linear(in_dim, channels)
        widths = [channels] + [max(channels // 2**i, 16) for i in range(1, 4)] + [3]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(4)
        )
        (h, w), (H, W) = grid, out_size
        self.sizes = [
            (round(h * (H / h) ** ((i + 1) / 4)), round(w * (W / w) ** ((i + 1) / 4)))
            for i in range(4)
        ]
        self.sizes[-1] = (H, W)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        b, n, _ = patch_features.shape
        h, w = self.grid
        if n != h * w:
            raise ValueError(f"decoder expects {h}x{w}={h * w} patch tokens, got {n}")
        x = self.embed(patch_features).transpose(1, 2).reshape(b, -1, h, w)
        for i, conv in enumerate(self.convs):
            if x.shape[-2:] != self.sizes[i]:
                x = F.interpolate(x, size=self.sizes[i], mode="bilinear", align_corners=False)
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.gelu(x)
        return x
