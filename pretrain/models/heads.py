"""Projection heads: the split head (z_inv | z_equi) and the DINO/iBOT prototype head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitHead(nn.Module):
    """One linear layer D -> d_patch on every token, split along features.

    `forward(tokens (..., D)) -> (z_inv (..., d_patch - d_equi), z_equi (..., d_equi))`.
    """

    def __init__(self, in_dim: int, d_patch: int, d_equi: int) -> None:
        super().__init__()
        if not 0 < d_equi < d_patch:
            raise ValueError(f"need 0 < recon.d_equi ({d_equi}) < split.d_patch ({d_patch})")
        self.d_patch, self.d_equi = d_patch, d_equi
        self.proj = nn.Linear(in_dim, d_patch)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    @property
    def d_inv(self) -> int:
        return self.d_patch - self.d_equi

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.proj(tokens)
        return z[..., : self.d_inv], z[..., self.d_inv :]


class DINOHead(nn.Module):
    """MLP -> L2-normalized bottleneck -> weight-normalized prototypes (DINO/iBOT head).

    `forward(x (..., in_dim)) -> logits (..., out_dim)`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(n_layers - 1, 0)):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Weight-normalized prototypes with a fixed unit gain (as DINO): stored as direction `v`.
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        w = F.normalize(self.prototypes, dim=-1, eps=1e-6)
        return h @ w.t()
