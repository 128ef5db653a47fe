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

    def inv(self, tokens: torch.Tensor) -> torch.Tensor:
        """z_inv only, (..., d_inv): the rows of the projection the base method reads.

        Equal to `forward(tokens)[0]` at d_inv/d_patch of its cost; training calls it on just
        the tokens the heads read (CLS, masked patches).
        """
        d = self.d_inv
        return F.linear(tokens, self.proj.weight[:d], self.proj.bias[:d])

    def equi(self, tokens: torch.Tensor) -> torch.Tensor:
        """z_equi only, (..., d_equi): equal to `forward(tokens)[1]` (the decoders' input)."""
        d = self.d_inv
        return F.linear(tokens, self.proj.weight[d:], self.proj.bias[d:])


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

    def normalized_prototypes(self) -> torch.Tensor:
        """(out_dim, bottleneck) unit-norm rows v / ‖v‖.

        torch's fused weight-norm kernel (forward and backward one pass each over the
        65,536 × 256 matrix: ~4x faster on CPU than `F.normalize` + autograd). A row of exactly
        zero would give NaN; rows start random and weight decay only shrinks them.
        """
        v = self.prototypes
        return torch._weight_norm(v, v.new_ones(v.shape[0], 1), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return h @ self.normalized_prototypes().t()
