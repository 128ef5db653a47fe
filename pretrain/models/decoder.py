"""The light reconstruction decoder D_k: per-patch linear, patch grid, four convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Where the 3×3 convolutions sit relative to the bilinear resizes (`recon.decoder_resize`).
DECODER_RESIZE = ("after_conv", "before_conv")


class ReconDecoder(nn.Module):
    """Predict an image (B, 3, H, W) from per-patch features (B, N, in_dim) on an h×w grid.

    One linear layer per patch token to `channels`, reshape to (B, channels, h, w), then four
    `kernel`×`kernel` convolutions (3×3 by default) with bilinear resizes between them that reach (H, W) geometrically (for
    patch 16: 2× per step). Widths halve per layer (min 16); GELU between layers; the last layer
    outputs 3 channels in the normalized pixel space.

    `resize`:
        - ``after_conv`` (default): every convolution runs at the resolution it receives and the
          map is resized after it (grid, 2×, 4×, 8× for patch 16; the 3-channel output is then
          resized to (H, W)). The first three convolutions cost about the same and the whole
          decoder a quarter of ``before_conv`` (ViT-S/16, 224 px: 0.18 vs 0.74 GMAC per image);
          the widest maps are never brought to full resolution.
        - ``before_conv``: the map is resized before every convolution (grid·2, ·4, ·8, (H, W)
          for patch 16), so convolutions 1-3 run at 2× higher resolution (the layout before
          2026-12; same parameters, so its checkpoints load either way).

    `kernel` (odd): the convolutions' size. 1 makes the decoder local: each output pixel reads
    only the features bilinearly interpolated at its own position, so the decoder cannot move
    content across patches and any geometric work (un-rotating v2) must be done by the encoder
    (`recon.decoder_kernel`; the paper says "convolution layers" without a size).
    """

    def __init__(
        self,
        in_dim: int,
        out_size: tuple[int, int],
        grid: tuple[int, int],
        channels: int = 256,
        resize: str = "after_conv",
        kernel: int = 3,
    ) -> None:
        super().__init__()
        if resize not in DECODER_RESIZE:
            raise ValueError(f"recon.decoder_resize={resize!r}; choose one of {DECODER_RESIZE}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"recon.decoder_kernel={kernel}; need an odd size >= 1")
        self.out_size, self.grid, self.resize = out_size, grid, resize
        self.embed = nn.Linear(in_dim, channels)
        widths = [channels] + [max(channels // 2**i, 16) for i in range(1, 4)] + [3]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], kernel, padding=kernel // 2) for i in range(4)
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
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            if self.resize == "before_conv" and x.shape[-2:] != self.sizes[i]:
                x = _resize(x, self.sizes[i])
            x = conv(x)
            if i < last:
                x = F.gelu(x)
            if self.resize == "after_conv" and x.shape[-2:] != self.sizes[i]:
                x = _resize(x, self.sizes[i])
        return x


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
