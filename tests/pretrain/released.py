"""A "released" backbone file for the continued-pretraining tests (issue #26)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrain.models.backbone import backbone_kwargs, build_backbone


def save_hub_file(cfg: Any, path: Path, seed: int) -> Path:
    """Random weights of `cfg`'s backbone saved at `path` in the DINOv2 hub layout (timm's key
    names without our `vit.` prefix, the mask token (1, D))."""
    backbone = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in backbone.state_dict().items()}
    state["mask_token"] = state.pop("mask_token").reshape(1, -1)
    torch.save({k.removeprefix("vit."): v for k, v in state.items()}, path)
    return path
