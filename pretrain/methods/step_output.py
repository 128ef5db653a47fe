"""What one training step of a method returns: its losses and the tensors kept for logging."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

N_LOGGED_IMAGES = 8  # images per StepOutput kept for the reconstruction grid


@dataclass
class StepOutput:
    """Losses of one step (fp32 scalars) and tensors kept for logging/visualization."""

    loss_total: torch.Tensor
    loss_ssl: torch.Tensor
    loss_recon: torch.Tensor | None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    recon_inputs: torch.Tensor | None = None  # u (B, 3, H, W)
    recon_targets: list[torch.Tensor] = field(default_factory=list)  # u_k
    recon_preds: list[torch.Tensor] = field(default_factory=list)  # û_k
    transformed: torch.Tensor | None = None  # v2 = g_θ(u)
