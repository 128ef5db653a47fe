"""The multi-crop batch every training reader makes on one rank, described once.

:class:`MultiCrop` holds the arguments all readers share (batch, seed, rank, crop sizes and
scales, iBOT masking); each reader takes them as keyword arguments next to its own (workers,
threads, device) and :func:`multicrop_kwargs` reads them from a run config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_pipeline.masking import GlobalCropMasks


@dataclass(frozen=True)
class MultiCrop:
    """One rank's batches: ``batch_size`` images, each as 2 global crops (``global_size`` px,
    area fraction in ``global_scale``) and ``n_local`` local ones (``local_size``,
    ``local_scale``); a ``mask_prob`` fraction of global crops masked over their
    ``global_size // patch_size`` patch grid at a ratio in ``mask_ratio``; every random choice
    seeded from ``seed`` (and the rank of ``world_size``)."""

    batch_size: int
    seed: int
    global_size: int
    local_size: int
    n_local: int
    patch_size: int
    rank: int = 0
    world_size: int = 1
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    mask_prob: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)

    def masks(self) -> GlobalCropMasks:
        """The iBOT mask drawer of these global crops."""
        return GlobalCropMasks(self.global_size, self.patch_size, self.mask_prob, self.mask_ratio)


def multicrop_kwargs(cfg: Any, rank: int, world_size: int, patch_size: int) -> dict[str, Any]:
    """The :class:`MultiCrop` fields of a run (`equirecon.config.Config`), as reader arguments."""
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


__all__ = ["MultiCrop", "multicrop_kwargs"]
