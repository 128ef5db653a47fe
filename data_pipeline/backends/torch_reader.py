"""``data.backend=torch``: the torch reader (`data_pipeline.torch_reader`), CPU decode in
``data.num_workers`` DataLoader processes, exactly resumable."""

from __future__ import annotations

from typing import Any

from data_pipeline.backends.base import register_backend


def build_torch_loader(cfg: Any, dist_info: Any, patch_size: int) -> Any:
    """The torch reader of this rank for a run (``cfg``: :class:`equirecon.config.Config`)."""
    from data_pipeline.multicrop import multicrop_kwargs
    from data_pipeline.torch_reader.loader import build_train_loader

    return build_train_loader(
        cfg.data.path,
        num_workers=cfg.data.num_workers,
        pin_memory=dist_info.device.type == "cuda",
        augmentations=cfg.data.augmentations,
        **multicrop_kwargs(cfg, dist_info.rank, dist_info.world_size, patch_size),
    )


register_backend("torch", build_torch_loader, "shards, PIL decode, DataLoader workers")
