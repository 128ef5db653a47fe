"""The multi-crop batch every training reader makes, and its arguments from a run config."""

from __future__ import annotations

from typing import Any


def multicrop_kwargs(cfg: Any, rank: int, world_size: int, patch_size: int) -> dict[str, Any]:
    """Reader arguments shared by every backend, from a run config (`equirecon.config.Config`)."""
    d = cfg.data
    return {
        "batch_size": cfg.train.batch_size,
        "seed": cfg.train.seed,
        "rank": rank,
        "world_size": world_size,
        "global_size": d.global_size,
        "local_size": d.local_size,
        "n_local": d.n_local,
        "patch_size": patch_size,
        "global_scale": tuple(d.global_scale),
        "local_scale": tuple(d.local_scale),
        "mask_prob": cfg.method.mask_prob,
        "mask_ratio": tuple(cfg.method.mask_ratio),
    }


__all__ = ["multicrop_kwargs"]
